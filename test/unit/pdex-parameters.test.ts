import { davinciExportParameters } from '../../src/fhir/pdex';

describe("$davinci-data-export's Parameters as ATR types them", () => {
  it('sends exportType as canonical, _since/_until as instant, patient as Reference, the rest as string', () => {
    const parts = davinciExportParameters({ _since: ['2024-01-01T00:00:00Z'], _until: ['2025-01-01T00:00:00Z'], patient: ['Patient/a', 'Patient/b'], _type: ['Coverage,Patient'], exportType: ['ignored'] });
    expect(parts).toEqual([
      { name: 'exportType', valueCanonical: 'hl7.fhir.us.davinci-pdex#payertopayer' },
      { name: '_since', valueInstant: '2024-01-01T00:00:00Z' },
      { name: '_until', valueInstant: '2025-01-01T00:00:00Z' },
      { name: 'patient', valueReference: { reference: 'Patient/a' } },
      { name: 'patient', valueReference: { reference: 'Patient/b' } },
      { name: '_type', valueString: 'Coverage,Patient' },
    ]);
  });
});
