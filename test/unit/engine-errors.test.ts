import { errorHandler } from '../../src/fhir/errors';
import { joinTerms } from '../../src/store/sqlite/filter-sql';
import { createLogger } from '../../src/logger';

/** The error handler's answer to `err`, with a response that records what it is given. */
function answer(err: unknown) {
  const sent: { status?: number; body?: any } = {};
  const res = {
    headersSent: false,
    set: () => res,
    status: (s: number) => ((sent.status = s), res),
    type: () => res,
    send: (b: string) => ((sent.body = JSON.parse(b)), res),
  };
  errorHandler(createLogger('error', true))(err, { method: 'GET', path: '/x' } as never, res as never, () => undefined);
  return sent;
}

describe("the database engine's size refusals", () => {
  const sqlite = (message: string, code = 'SQLITE_ERROR') => Object.assign(new Error(message), { code });

  it.each(['Expression tree is too large (maximum depth 1000)', 'too many SQL variables', 'LIKE or GLOB pattern too complex', 'string or blob too big'])('answers "%s" with a 400 OperationOutcome, not a 500', (message) => {
    const sent = answer(sqlite(message, message.startsWith('string') ? 'SQLITE_TOOBIG' : 'SQLITE_ERROR'));
    expect(sent.status).toBe(400);
    expect(sent.body.issue[0].code).toBe('too-costly');
    expect(sent.body.issue[0].diagnostics).not.toContain(message);
  });

  it('leaves any other engine error a 500', () => {
    expect(answer(sqlite('disk I/O error', 'SQLITE_IOERR')).status).toBe(500);
    expect(answer(sqlite('no such table: x')).status).toBe(500);
  });

  it('joins many terms in nested groups of 50, a few as before', () => {
    expect(joinTerms(['a', 'b'], 'OR')).toBe('(a OR b)');
    const many = joinTerms(Array.from({ length: 1000 }, (_, i) => `t${i}`), 'AND');
    expect(many.match(/t\d+/g)).toEqual(Array.from({ length: 1000 }, (_, i) => `t${i}`));
    let depth = 0;
    let deepest = 0;
    for (const c of many) deepest = Math.max(deepest, (depth += c === '(' ? 1 : c === ')' ? -1 : 0));
    expect(deepest).toBe(2);
  });
});
