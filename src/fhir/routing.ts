import type { RequestHandler } from 'express';

/**
 * Middlewares run one after another as a single handler: what Express does for a chain of
 * `app.use` layers, without matching each layer's path again. A thrown error, or one passed on,
 * goes to Express's error handlers.
 */
export function series(...handlers: RequestHandler[]): RequestHandler {
  return (req, res, next) => {
    let i = 0;
    const step = (err?: unknown): void => {
      if (err) return next(err);
      const handler = handlers[i++];
      if (!handler) return next();
      try {
        handler(req, res, step);
      } catch (thrown) {
        next(thrown);
      }
    };
    step();
  };
}
