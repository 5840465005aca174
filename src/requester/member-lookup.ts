import type { Identifier } from 'fhir/r4';
import type { RemotePayer } from './remote-payer-client';
import { ExchangeFailed } from './exchange-errors';

/**
 * The member's Patient at the source when $member-match answered MemberIdentifier only (MemberId
 * is 0..1 in HRex): `Patient?identifier=system|value`, then the bare value; exactly one Patient,
 * else the exchange fails saying why.
 */
export async function findMember(remote: RemotePayer, identifier: Identifier): Promise<string> {
  const tokens = [...(identifier.system ? [`${identifier.system}|${identifier.value}`] : []), identifier.value as string];
  for (const token of tokens) {
    const ids = await remote.patientsByIdentifier(token);
    if (ids.length === 1) return ids[0];
    if (ids.length > 1) throw new ExchangeFailed(`The source payer answered $member-match without a MemberId, and its MemberIdentifier finds ${ids.length} Patients there`);
  }
  throw new ExchangeFailed('The source payer answered $member-match without a MemberId, and its MemberIdentifier finds no Patient there');
}
