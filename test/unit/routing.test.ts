import http from 'node:http';
import { AddressInfo } from 'node:net';
import express from 'express';
import { series } from '../../src/fhir/routing';

/** Serves `app` on loopback for one test; returns a GET that answers status and body. */
async function serve(app: express.Express) {
  const server = http.createServer(app).listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    get: async (path: string) => {
      const res = await fetch(base + path);
      return `${res.status} ${await res.text()}`;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

describe('series', () => {
  it('series runs middlewares in order, stops where one answers, and hands errors, thrown (even after an asynchronous step) or passed, to Express', async () => {
    const order: string[] = [];
    const app = express();
    app.use(
      series(
        (req, _res, next) => (order.push(`a ${req.path}`), next()),
        (req, res, next) => (req.path === '/stop' ? void res.send('stopped') : next()),
        // Goes on later, as a body parser does once the body is in: what follows runs outside Express's own try.
        (_req, _res, next) => void setImmediate(next),
        (req, _res, next) => {
          if (req.path === '/throw') throw new Error('thrown');
          if (req.path === '/pass') return next(new Error('passed'));
          order.push(`c ${req.path}`);
          next();
        },
      ),
    );
    app.get('/ok', (_req, res) => void res.send('ok'));
    app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => void res.status(400).send(err.message));
    const s = await serve(app);
    try {
      expect(await s.get('/ok')).toBe('200 ok');
      expect(await s.get('/stop')).toBe('200 stopped');
      expect(await s.get('/throw')).toBe('400 thrown');
      expect(await s.get('/pass')).toBe('400 passed');
      expect(order).toEqual(['a /ok', 'c /ok', 'a /stop', 'a /throw', 'a /pass']);
    } finally {
      await s.close();
    }
  });
});
