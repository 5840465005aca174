import fs from 'node:fs';
import path from 'node:path';
import { generateClientKeys } from '../../src/auth/keys';
import { runCheckPartner } from '../../scripts/check-partner';
import { tempDir } from '../helpers/server';
import { memberMatchBody } from '../helpers/seed';
import { REQUESTER_CLIENT_ID, SourcePayerFixture, startSource } from '../helpers/payers';
import { FakeSource, startFakeSource } from '../helpers/fake-source';

/** `npm run check-partner`, against this server as the source and against a broken fake one. */
function payersFile(entry: Record<string, unknown>): string {
  const file = path.join(tempDir('partner-check-'), 'source-payers.json');
  fs.writeFileSync(file, JSON.stringify([{ issuer: 'https://partner.example.com', name: 'Partner', clientAuthenticationMode: 'PRIVATE_KEY_JWT', scopes: 'system/*.read', ...entry }]));
  return file;
}

/** The table's rows, as check → result. */
const table = (output: string) =>
  Object.fromEntries(
    output
      .split('\n')
      .map((l) => l.match(/^(.+?)\s{2,}(PASS|FAIL|SKIP)\s{2}/))
      .filter((m): m is RegExpMatchArray => !!m)
      .map((m) => [m[1].trim(), m[2]]),
  );

describe('check-partner', () => {
  let source: SourcePayerFixture;
  let fake: FakeSource;
  beforeAll(async () => {
    source = await startSource(3);
    fake = await startFakeSource();
  });
  afterAll(async () => {
    await source.server.stop();
    await fake.close();
  });

  it('passes every check against this server as the source, with a test member', async () => {
    const file = payersFile({ fhirBaseUrl: source.server.baseUrl, clientId: REQUESTER_CLIENT_ID, privateKeyJwk: source.client.privateJwk });
    const memberFile = path.join(tempDir('member-'), 'member.json');
    fs.writeFileSync(memberFile, JSON.stringify(memberMatchBody(source.members[0])));
    const { code, output } = await runCheckPartner(['--issuer', 'https://partner.example.com', '--member', memberFile, '--timeout', '30'], { SOURCE_PAYERS_FILE: file }, { minPollMs: 50 });
    expect(table(output)).toEqual({
      'SMART discovery': 'PASS',
      'Access token': 'PASS',
      CapabilityStatement: 'PASS',
      '$member-match: test member': 'PASS',
      '$member-match: invented member': 'PASS',
      'Export kick-off': 'PASS',
      'Export status polling': 'PASS',
      Manifest: 'PASS',
      'File download': 'PASS',
      'Export DELETE': 'PASS',
    });
    expect(output).toContain(`matched Patient/${source.members[0].patientId}`);
    expect(code).toBe(0);

    // Without a member, what needs one is skipped, and the run still passes.
    const bare = await runCheckPartner(['--issuer', 'https://partner.example.com'], { SOURCE_PAYERS_FILE: file });
    expect(table(bare.output)['Export kick-off']).toBe('SKIP');
    expect(bare.output).toMatch(/\$member-match: test member\s+SKIP\s+no --member file given/);
    expect(bare.code).toBe(0);
  });

  it('fails, saying why, against a source that matches anyone, has no metadata and sends a short manifest', async () => {
    const { privateJwk } = await generateClientKeys();
    const file = payersFile({ fhirBaseUrl: fake.base, clientId: 'us', privateKeyJwk: privateJwk });
    const memberFile = path.join(tempDir('member-'), 'member.json');
    fs.writeFileSync(memberFile, JSON.stringify(memberMatchBody({ family: 'A', given: 'B', birthDate: '1970-01-01', memberId: 'M' })));
    fake.manifest = () => ({ transactionTime: new Date().toISOString(), request: `${fake.base}/Patient/m1/$export`, output: [] });
    const { code, output } = await runCheckPartner(['--issuer', 'https://partner.example.com', '--member', memberFile], { SOURCE_PAYERS_FILE: file });
    const rows = table(output);
    expect(rows).toMatchObject({
      'SMART discovery': 'PASS',
      'Access token': 'PASS',
      CapabilityStatement: 'FAIL',
      '$member-match: test member': 'PASS',
      '$member-match: invented member': 'FAIL',
      'Export kick-off': 'PASS',
      Manifest: 'FAIL',
      'File download': 'SKIP',
      'Export DELETE': 'FAIL',
    });
    expect(output).toMatch(/invented member\s+FAIL\s+an invented member was matched/);
    expect(output).toMatch(/Manifest\s+FAIL\s+missing requiresAccessToken, error/);
    expect(output).toMatch(/Export DELETE\s+FAIL\s+DELETE answered 200, not 202/);
    expect(output).toMatch(/failed/);
    expect(code).toBe(1);
  });

  it('refuses an unknown issuer', async () => {
    const file = payersFile({ fhirBaseUrl: fake.base, clientId: 'us', privateKeyJwk: (await generateClientKeys()).privateJwk });
    const res = await runCheckPartner(['--issuer', 'https://nobody.example.com'], { SOURCE_PAYERS_FILE: file });
    expect(res.code).toBe(2);
    expect(res.output).toMatch(/No source payer with issuer/);
  });
});
