import { describeSource, servedList } from '../../src/requester/source-capabilities';
import { exportParameters } from '../../src/requester/remote-payer-client';
import { skippedText } from '../../src/requester/manifest';

/**
 * What a source serves, read from its CapabilityStatement. The first two statements have the
 * shapes of the PDex IG's own (fsh-generated/resources/CapabilityStatement-pdex-payer-access-server.json
 * and CapabilityStatement-pdex-server.json): operations on Group and Patient, each with its name
 * and its definition canonical.
 */
const PDEX = 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch';
const ATR = 'http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export';
const HREX = 'http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match';
const cs = (rest: unknown[]) => ({ resourceType: 'CapabilityStatement', status: 'active', kind: 'requirements', fhirVersion: '4.0.1', format: ['json'], rest });

describe('describeSource', () => {
  it("reads the IG's payer-access server statement: the bulk operations on Group", () => {
    const payerAccess = cs([{ mode: 'server', resource: [{ type: 'Group', operation: [{ name: 'bulk-member-match', definition: PDEX }, { name: 'davinci-data-export', definition: ATR }] }] }]);
    expect(describeSource(payerAccess)).toEqual({ known: true, memberMatch: false, bulkMemberMatch: true, davinciDataExport: true, patientExport: false, groupExport: false, systemExport: false });
  });

  it("reads the IG's PDex server statement: member-match on Patient beside the bulk ones, other operations ignored", () => {
    const server = cs([
      {
        mode: 'server',
        resource: [
          { type: 'DocumentReference', operation: [{ name: 'docref', definition: 'http://hl7.org/fhir/us/core/OperationDefinition/docref' }] },
          { type: 'Group', operation: [{ name: 'bulk-member-match', definition: PDEX }, { name: 'davinci-data-export', definition: ATR }] },
          { type: 'Patient', operation: [{ name: 'member-match', definition: HREX }] },
          { type: 'ValueSet', operation: [{ name: 'expand', definition: 'http://hl7.org/fhir/OperationDefinition/ValueSet-expand' }] },
        ],
      },
    ]);
    expect(servedList(describeSource(server))).toEqual(['$member-match', '$bulk-member-match', '$davinci-data-export']);
  });

  it('finds operations by canonical whatever their name, a version suffix ignored, at system level too', () => {
    const byCanonical = cs([
      {
        mode: 'server',
        operation: [{ name: 'mm', definition: `${HREX}|1.1.0` }],
        resource: [
          { type: 'Group', operation: [{ name: 'bmm', definition: `${PDEX}|2.1.0` }, { name: 'atr', definition: ATR }, { name: 'grp', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export' }] },
          { type: 'Patient', operation: [{ name: 'pe', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export' }] },
        ],
      },
    ]);
    expect(describeSource(byCanonical)).toEqual({ known: true, memberMatch: true, bulkMemberMatch: true, davinciDataExport: true, patientExport: true, groupExport: true, systemExport: false });
  });

  it("finds them by name where no known canonical is given: the narrative's multi-member-match too; Bulk Data's export where it is declared", () => {
    const byName = cs([
      {
        mode: 'server',
        operation: [{ name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' }],
        resource: [
          { type: 'Group', operation: [{ name: 'multi-member-match', definition: 'https://source.example/OperationDefinition/mmm' }, { name: '$davinci-data-export', definition: 'https://source.example/x' }, { name: 'export', definition: 'https://source.example/y' }] },
          { type: 'Patient', operation: [{ name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' }] },
        ],
      },
    ]);
    expect(describeSource(byName)).toEqual({ known: true, memberMatch: false, bulkMemberMatch: true, davinciDataExport: true, patientExport: true, groupExport: true, systemExport: true });
  });

  it('reads nothing from what is not a server CapabilityStatement, and survives any shape', () => {
    const none = { known: false, memberMatch: false, bulkMemberMatch: false, davinciDataExport: false, patientExport: false, groupExport: false, systemExport: false };
    for (const odd of [undefined, null, 'x', 42, [], { resourceType: 'OperationOutcome' }, { resourceType: 'Parameters', rest: [{ resource: [{ type: 'Group', operation: [{ name: 'bulk-member-match' }] }] }] }]) {
      expect(describeSource(odd)).toEqual(none);
    }
    // A client-mode statement says nothing of what the source serves; broken entries are skipped.
    const client = cs([{ mode: 'client', resource: [{ type: 'Group', operation: [{ name: 'bulk-member-match', definition: PDEX }] }] }]);
    expect(describeSource(client)).toEqual({ ...none, known: true });
    const broken = cs([null, 'x', { mode: 'server', operation: 'no', resource: [null, { type: 7 }, { type: 'Group', operation: [null, 3, { name: 5, definition: {} }, { name: '__proto__' }, { name: 'constructor' }, { name: 'bulk-member-match' }] }] }]);
    expect(describeSource(broken)).toEqual({ ...none, known: true, bulkMemberMatch: true });
    // A name on a resource it does not belong to is not taken for the operation.
    expect(describeSource(cs([{ mode: 'server', resource: [{ type: 'Observation', operation: [{ name: 'member-match' }, { name: 'bulk-member-match' }] }] }]))).toEqual({ ...none, known: true });
  });
});

describe('what the kick-off sends', () => {
  it("POST Patient/$export's parameters: the member as a reference, instants as instants, the rest strings", () => {
    expect(exportParameters('m1', { _since: ['2024-01-01T00:00:00Z'], _type: ['Condition'] })).toEqual([
      { name: 'patient', valueReference: { reference: 'Patient/m1' } },
      { name: '_since', valueInstant: '2024-01-01T00:00:00Z' },
      { name: '_type', valueString: 'Condition' },
    ]);
  });

  it('names each type not stored here with what the manifest said of its count', () => {
    expect(skippedText({ skipped: {} })).toBeUndefined();
    expect(skippedText({ skipped: { BodyStructure: 5, Basic: 0, Media: 3 }, skippedFiles: { BodyStructure: { files: 2, uncounted: 0 }, Basic: { files: 1, uncounted: 1 }, Media: { files: 2, uncounted: 1 } } })).toBe(
      'the source sent types this server cannot store, not imported: BodyStructure (5 resource(s)), Basic (1 file(s), count not given), Media (3 resource(s) and 1 file(s) without a count)',
    );
  });
});
