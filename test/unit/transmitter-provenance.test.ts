import { MAX_TARGETS, TransmitterLog, transmitterProvenance } from '../../src/responder/transmitter-provenance';

describe('transmitter Provenance', () => {
  const payer = { reference: 'Organization/this-payer', name: 'Plan' };

  it('a big export is named in chunks of at most 1,000 targets, with ids stable for the job', () => {
    const run = () => {
      const log = new TransmitterLog('transmitter-job1', '2026-01-01T00:00:00Z', payer);
      const out = [];
      for (let i = 0; i < 2500; i++) {
        const chunk = log.sent({ resourceType: 'Observation', id: `o${i}` });
        if (chunk) out.push(chunk);
      }
      out.push(...log.flush());
      return out;
    };
    const chunks = run();
    expect(chunks.map((p) => p.target.length)).toEqual([MAX_TARGETS, MAX_TARGETS, 500]);
    expect(chunks.map((p) => p.id)).toEqual(['transmitter-job1-1', 'transmitter-job1-2', 'transmitter-job1-3']);
    expect(run().map((p) => p.id)).toEqual(chunks.map((p) => p.id));
    expect(new Set(chunks.flatMap((p) => p.target.map((t) => t.reference))).size).toBe(2500);
  });

  it('keeps each member\'s records in Provenance of their own', () => {
    const log = new TransmitterLog('t', '2026-01-01T00:00:00Z', payer);
    log.sent({ resourceType: 'Patient', id: 'm1' }, 'm1');
    log.sent({ resourceType: 'Patient', id: 'm2' }, 'm2');
    log.sent({ resourceType: 'Observation', id: 'o1' }, 'm1');
    log.sent({ resourceType: 'Organization', id: 'org' });
    expect(log.flush().map((p) => p.target.map((t) => t.reference))).toEqual([['Patient/m1', 'Observation/o1'], ['Patient/m2'], ['Organization/org']]);
  });

  it('is shaped as PDex\'s transmitter example', () => {
    const p = transmitterProvenance('t-1', ['Patient/m1'], '2026-01-01T00:00:00Z', payer);
    expect(p).toMatchObject({
      meta: { profile: ['http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance'] },
      target: [{ reference: 'Patient/m1' }],
      recorded: '2026-01-01T00:00:00Z',
      agent: [{ type: { coding: [{ system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type', code: 'transmitter' }] }, who: { reference: 'Organization/this-payer' } }],
    });
  });
});
