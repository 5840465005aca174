import fs from 'node:fs';
import path from 'node:path';

/**
 * docker-compose.yml and the Dockerfile, checked as far as can be without a Docker engine: every
 * variable the compose file sets is one the server reads, every host path it mounts and every path
 * the Dockerfile copies exists, and the image runs as a non-root user with nothing secret baked in.
 */
const root = path.join(__dirname, '..', '..');
const read = (f: string) => fs.readFileSync(path.join(root, f), 'utf8');

describe('deployment files', () => {
  const compose = read('docker-compose.yml');
  const dockerfile = read('Dockerfile');

  it('the compose file sets only variables the server reads, and mounts paths that exist', () => {
    const readByServer = new Set([...read('src/config.ts').matchAll(/env\.([A-Z_]+)/g)].map((m) => m[1]));
    const blocks = [...compose.matchAll(/\n    environment:\n((?: {6}[A-Z_]+: .*\n)+)/g)].map((m) => m[1]);
    expect(blocks.length).toBeGreaterThanOrEqual(2);
    const set = blocks.flatMap((b) => [...b.matchAll(/^ {6}([A-Z_]+):/gm)].map((m) => m[1]));
    expect(set.filter((name) => !readByServer.has(name))).toEqual([]);
    const mounts = [...compose.matchAll(/^ {6}- (\.\/[^:]+):/gm)].map((m) => m[1]);
    expect(mounts.length).toBeGreaterThan(0);
    for (const m of mounts) expect({ mount: m, exists: fs.existsSync(path.join(root, m)) }).toEqual({ mount: m, exists: true });
    expect(compose).toMatch(/isWritablePrimary/); // healthy only with a primary
    expect(compose).toMatch(/restart: unless-stopped/);
    expect(compose).toMatch(/PUBLIC_BASE_URL: \$\{PUBLIC_BASE_URL/);
  });

  it('the Dockerfile copies what exists, bakes in no configuration or keys, and runs as a non-root user', () => {
    const copied = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1].split(/\s+/));
    for (const c of copied) expect({ copied: c, exists: fs.existsSync(path.join(root, c)) }).toEqual({ copied: c, exists: true });
    expect(copied).not.toContain('config');
    expect(copied).not.toContain('keys');
    expect(dockerfile).toMatch(/^USER node$/m);
    // The running image cannot write node_modules/.cache: the validators are generated while it is built.
    expect(dockerfile.indexOf('warmUpValidator')).toBeGreaterThan(dockerfile.indexOf('npm prune'));
    expect(dockerfile.indexOf('warmUpValidator')).toBeLessThan(dockerfile.indexOf('FROM node:20-slim\n'));
    const ignored = read('.dockerignore').split('\n');
    expect(ignored).toEqual(expect.arrayContaining(['keys', 'config', 'data']));
  });
});
