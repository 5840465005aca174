import { createLogger } from '../../src/logger';

describe('logger', () => {
  it('writes the lines of one turn of the event loop together, in order, errors and warnings to stderr, with secrets redacted', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const stdout = jest.spyOn(process.stdout, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true));
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation((chunk) => (err.push(String(chunk)), true));
    try {
      const logger = createLogger('info');
      logger.info('request', { path: '/4_0_1/Patient/1', status: 200 });
      logger.warn('slow', { ms: 1200 });
      logger.info('request', { path: '/4_0_1/Patient/2', authorization: 'Bearer abc.def' });
      logger.debug('not at this level');
      expect(out).toEqual([]);
      await new Promise((resolve) => setImmediate(resolve));
      expect(out).toHaveLength(1);
      const lines = out[0].trimEnd().split('\n').map((line) => JSON.parse(line));
      expect(lines.map((l) => [l.level, l.message, l.path])).toEqual([
        ['info', 'request', '/4_0_1/Patient/1'],
        ['info', 'request', '/4_0_1/Patient/2'],
      ]);
      expect(lines[1].authorization).toBe('[redacted]');
      expect(err.map((chunk) => JSON.parse(chunk).message)).toEqual(['slow']);
      logger.info('later');
      await new Promise((resolve) => setImmediate(resolve));
      expect(out.map((chunk) => JSON.parse(chunk.trimEnd().split('\n').pop() as string).message)).toEqual(['request', 'later']);
    } finally {
      stdout.mockRestore();
      stderr.mockRestore();
    }
  });

  it('redacts secrets at any depth, leaves the caller\'s objects alone, and still writes entries native JSON cannot (a cycle, a BigInt)', async () => {
    const out: string[] = [];
    const stdout = jest.spyOn(process.stdout, 'write').mockImplementation((chunk) => (out.push(String(chunk)), true));
    try {
      const logger = createLogger('info');
      const payer = { issuer: 'https://old.example', auth: { client_secret: 's3cret', keys: [{ kty: 'EC', d: 'private-part' }] } };
      const cyclic: Record<string, unknown> = { name: 'loop' };
      cyclic.self = cyclic;
      logger.info('payer', { payer });
      logger.info('odd', { cyclic, count: BigInt(3) });
      logger.info('at', { timestamp: '2026-01-02T03:04:05.000Z' });
      await new Promise((resolve) => setImmediate(resolve));
      const text = out.join('');
      expect(text).not.toContain('s3cret');
      expect(text).not.toContain('private-part');
      const [first, second, third] = text.trimEnd().split('\n').map((line) => JSON.parse(line));
      expect(first.payer).toEqual({ issuer: 'https://old.example', auth: { client_secret: '[redacted]', keys: [{ kty: 'EC', d: '[redacted]' }] } });
      expect(payer.auth.client_secret).toBe('s3cret');
      expect(second.message).toBe('odd');
      expect(second.count).toBe('3');
      expect(third.timestamp).toBe('2026-01-02T03:04:05.000Z');
      expect(typeof first.timestamp).toBe('string');
    } finally {
      stdout.mockRestore();
    }
  });
});
