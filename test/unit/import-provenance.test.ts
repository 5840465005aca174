import { provenanceOf, TARGETS_PER_PROVENANCE } from '../../src/requester/archive';

describe("this payer's Provenance of an import", () => {
  const args = (n: number) => ({ taskId: 't1', issuer: 'https://src.example', targets: Array.from({ length: n }, (_, i) => `Observation/o${i}`), archived: [], ownerReference: 'Organization/src', sourceName: 'Source', custodian: { reference: 'Organization/this-payer' }, now: '2026-12-04T00:00:00Z' });

  it('splits a large import into records of at most 1,000 targets, every target once, the first under the id it always had', () => {
    const one = provenanceOf(args(3));
    const many = provenanceOf(args(2 * TARGETS_PER_PROVENANCE + 500));
    expect(many.map((p) => p.target.length)).toEqual([1000, 1000, 500]);
    expect(many.flatMap((p) => p.target.map((t) => t.reference))).toEqual(args(2500).targets);
    expect(many[0].id).toBe(one[0].id);
    expect(new Set(many.map((p) => p.id)).size).toBe(3);
    // The same import gives the same ids (a re-run overwrites, never duplicates).
    expect(provenanceOf(args(2500)).map((p) => p.id)).toEqual(many.map((p) => p.id));
    for (const p of many) expect(p.agent.map((a) => a.type?.coding?.[0].code)).toEqual(['transmitter', 'custodian']);
  });
});
