import type { OperationDefinition, OperationDefinitionParameter } from 'fhir/r4';

/** Where an operation is served: at the system level, on types (`Patient/$x`), on instances (`Patient/{id}/$x`). */
export interface OperationLevels {
  system?: boolean;
  types?: string[];
  instance?: boolean;
}

/** One operation this server serves: its name in URLs (no `$`), its canonical, where it is served, and its definition. */
export interface ServedOperation {
  name: string;
  canonical: string;
  levels: OperationLevels;
  definition: OperationDefinition;
}

type Use = 'in' | 'out';
const param = (name: string, use: Use, min: number, max: string, type: string | undefined, documentation: string, part?: OperationDefinitionParameter[]): OperationDefinitionParameter => ({
  name,
  use,
  min,
  max,
  ...(type ? { type } : {}),
  documentation,
  ...(part ? { part } : {}),
});

const BULK = 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition';
export const CANONICALS = {
  bulkMemberMatch: 'http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch',
  davinciDataExport: 'http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export',
  memberMatch: 'http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match',
  everything: 'http://hl7.org/fhir/OperationDefinition/Patient-everything',
  export: `${BULK}/export`,
  patientExport: `${BULK}/patient-export`,
  groupExport: `${BULK}/group-export`,
};

/** The member-match parts of the exchange operations, as sent to the source's $member-match. */
const memberMatchParts = () => [
  param('MemberPatient', 'in', 1, '1', 'Patient', 'The member'),
  param('CoverageToMatch', 'in', 1, '1', 'Coverage', 'The coverage at the source payer'),
  param('CoverageToLink', 'in', 0, '1', 'Coverage', 'The coverage here'),
  param('Consent', 'in', 1, '1', 'Consent', 'The member\'s consent'),
];

/** The export parts of the exchange operations, passed to the source's export. */
const exchangeExportParts = () => [
  param('_type', 'in', 0, '*', 'string', 'Types to ask for; default: every type this server stores but Binary'),
  param('_since', 'in', 0, '1', 'string', 'Only resources changed after this instant'),
  param('_until', 'in', 0, '1', 'string', 'Only resources changed up to this instant'),
  param('_typeFilter', 'in', 0, '*', 'string', 'A search on one type'),
  param('_outputFormat', 'in', 0, '1', 'string', 'application/fhir+ndjson'),
];

/** The kick-off parameters this server takes, at every export level. */
function exportParameters(level: 'system' | 'patient' | 'group'): OperationDefinitionParameter[] {
  return [
    param('_outputFormat', 'in', 0, '1', 'string', 'application/fhir+ndjson (also application/ndjson and ndjson), the default'),
    param('_since', 'in', 0, '1', 'instant', 'Only resources changed after this instant'),
    param('_until', 'in', 0, '1', 'instant', 'Only resources changed up to this instant'),
    param('_type', 'in', 0, '*', 'string', 'Comma-separated resource types; default: every type the caller may read'),
    param('_typeFilter', 'in', 0, '*', 'string', 'A search on one type, e.g. Observation?category=laboratory'),
    ...(level === 'patient' ? [param('patient', 'in', 0, '*', 'Reference', 'In a POST to Patient/$export: the members to export')] : []),
  ];
}

function definition(args: {
  id: string;
  url: string;
  name: string;
  title: string;
  code: string;
  levels: OperationLevels;
  description: string;
  affectsState?: boolean;
  parameter: OperationDefinitionParameter[];
}): OperationDefinition {
  return {
    resourceType: 'OperationDefinition',
    id: args.id,
    url: args.url,
    name: args.name,
    title: args.title,
    status: 'active',
    kind: 'operation',
    description: args.description,
    affectsState: args.affectsState ?? false,
    code: args.code,
    ...(args.levels.types?.length ? { resource: args.levels.types } : {}),
    system: !!args.levels.system,
    type: !!args.levels.types?.length && !args.levels.instance,
    instance: !!args.levels.instance,
    parameter: args.parameter,
  };
}

/**
 * The operations this server serves, with their OperationDefinitions as served at
 * `[base]/OperationDefinition/{id}`. Standard operations keep their official canonical; this
 * server's own operations take a canonical under its own base, where they resolve.
 */
export function servedOperations(base: string): ServedOperation[] {
  const own = (id: string) => `${base}/OperationDefinition/${id}`;
  const bulkMemberMatch = definition({
    id: 'BulkMemberMatch',
    url: CANONICALS.bulkMemberMatch,
    name: 'BulkMemberMatch',
    title: 'PDex $bulk-member-match, as served here',
    code: 'bulk-member-match',
    levels: { types: ['Group'] },
    affectsState: true,
    description:
      'Asynchronous (Prefer: respond-async): matches each member as $member-match does and answers, in the manifest, the MatchedMembers, NonMatchedMembers and ConsentConstrainedMembers Groups (PDex 2.2 profiles: Group.code says which; each entry points at the MemberPatient as submitted, contained under its submitted id, and at the CoverageToMatch when one person comes in several MemberBundles) as a Group NDJSON file (PDex 2.2) and as a Parameters file (PDex 2.1). The Groups are the requesting client\'s alone.',
    parameter: [
      param('MemberBundle', 'in', 1, '*', undefined, 'One member', [
        param('MemberPatient', 'in', 1, '1', 'Patient', 'The member'),
        param('CoverageToMatch', 'in', 1, '1', 'Coverage', 'The coverage at this payer'),
        param('CoverageToLink', 'in', 0, '1', 'Coverage', 'The coverage at the requesting payer'),
        param('Consent', 'in', 1, '1', 'Consent', 'The member\'s consent'),
      ]),
      param('MatchedMembers', 'out', 1, '1', 'Group', 'The members matched, whose consent is honoured'),
      param('NonMatchedMembers', 'out', 0, '1', 'Group', 'The members not matched'),
      param('ConsentConstrainedMembers', 'out', 0, '1', 'Group', 'The members matched whose consent cannot be honoured'),
    ],
  });
  const ops: [string, OperationDefinition][] = [
    [
      'member-match',
      definition({
        id: 'member-match',
        url: CANONICALS.memberMatch,
        name: 'MemberMatch',
        title: 'HRex $member-match, as served here',
        code: 'member-match',
        levels: { types: ['Patient'] },
        affectsState: true,
        description:
          'Finds the one member whose demographics and coverage match, records the Consent and grants the caller access to that member under it. No match, several, or a consent that cannot be honoured: 422. Repeated failures are throttled (429).',
        parameter: [
          param('MemberPatient', 'in', 1, '1', 'Patient', 'The member as the requesting payer knows them'),
          param('Consent', 'in', 1, '1', 'Consent', 'The member\'s consent to the exchange (HRex consent: #regular or #sensitive policy, provision.period)'),
          param('CoverageToMatch', 'in', 1, '1', 'Coverage', 'The coverage at this (the old) payer'),
          param('CoverageToLink', 'in', 0, '1', 'Coverage', 'The coverage at the requesting (new) payer'),
          param('MemberIdentifier', 'out', 1, '1', 'Identifier', 'The member\'s identifier here, typed v2-0203#MB and hrex-temp#UMB'),
          param('MemberId', 'out', 0, '1', 'Reference', 'The member\'s Patient here'),
        ],
      }),
    ],
    [
      'everything',
      definition({
        id: 'Patient-everything',
        url: CANONICALS.everything,
        name: 'PatientEverything',
        title: 'Patient $everything, as served here',
        code: 'everything',
        levels: { types: ['Patient'], instance: true },
        description: 'The member\'s compartment and the practitioners, organizations, locations and medications it references, in pages; for a partner only what the member\'s consent allows.',
        parameter: [
          param('_since', 'in', 0, '1', 'instant', 'Only resources changed after this instant'),
          param('_type', 'in', 0, '*', 'code', 'Comma-separated resource types to include'),
          param('_count', 'in', 0, '1', 'integer', 'Resources per page; follow the Bundle\'s next link for more'),
          param('return', 'out', 1, '1', 'Bundle', 'A searchset Bundle'),
        ],
      }),
    ],
    [
      'export',
      definition({ id: 'export', url: CANONICALS.export, name: 'BulkDataExport', title: 'Bulk Data system $export', code: 'export', levels: { system: true }, description: 'Asynchronous export of every resource the caller may read, as NDJSON.', parameter: exportParameters('system') }),
    ],
    [
      'export',
      definition({ id: 'patient-export', url: CANONICALS.patientExport, name: 'PatientLevelExport', title: 'Bulk Data Patient $export', code: 'export', levels: { types: ['Patient'] }, description: 'Asynchronous export of the members\' compartments (all members the caller may see, or those named), as NDJSON; also served at Patient/{id}/$export.', parameter: exportParameters('patient') }),
    ],
    [
      'export',
      definition({ id: 'group-export', url: CANONICALS.groupExport, name: 'GroupLevelExport', title: 'Bulk Data Group $export', code: 'export', levels: { types: ['Group'], instance: true }, description: 'Asynchronous export of the compartments of a Group\'s members, as NDJSON.', parameter: exportParameters('group') }),
    ],
    ['bulk-member-match', bulkMemberMatch],
    // The IG's narrative name of the same operation: served at Group/$multi-member-match with the same
    // handler and permission, defined as a profile (`base`) of PDex's BulkMemberMatch under its own code.
    ['multi-member-match', { ...bulkMemberMatch, id: 'multi-member-match', url: own('multi-member-match'), name: 'MultiMemberMatch', title: 'PDex $multi-member-match (the narrative name of $bulk-member-match), as served here', code: 'multi-member-match', base: CANONICALS.bulkMemberMatch }],
    [
      'davinci-data-export',
      definition({
        id: 'davinci-data-export',
        url: CANONICALS.davinciDataExport,
        name: 'DaVinciDataExport',
        title: 'Da Vinci $davinci-data-export, as served here',
        code: 'davinci-data-export',
        levels: { types: ['Group'], instance: true },
        description: 'Bulk export of the members of a MatchedMembers Group (its owner only), each member\'s consent judged again when the export runs, keeping to the five-year window of service dates; members asked for but not exported are listed in the manifest\'s error file.',
        parameter: [
          param('patient', 'in', 0, '*', 'Reference', 'A subset of the Group\'s members'),
          param('exportType', 'in', 0, '1', 'canonical', 'The type of export (ATR); hl7.fhir.us.davinci-pdex#payertopayer for the payer-to-payer exchange'),
          // As ATR declares them (the export takes several _type and _typeFilter values all the same).
          param('_since', 'in', 0, '1', 'instant', 'Only resources changed after this instant'),
          param('_until', 'in', 0, '1', 'instant', 'Only resources changed up to this instant'),
          param('_type', 'in', 0, '1', 'string', 'Comma-separated resource types'),
          param('_typeFilter', 'in', 0, '1', 'string', 'Comma-separated searches, e.g. ExplanationOfBenefit?service-date=ge2020-01-01'),
        ],
      }),
    ],
    [
      'sdh.s2s.invoke-export',
      definition({
        id: 'sdh-s2s-invoke-export',
        url: own('sdh-s2s-invoke-export'),
        name: 'InvokeExport',
        title: 'Payer-to-payer exchange ($sdh.s2s.invoke-export)',
        code: 'sdh.s2s.invoke-export',
        levels: { types: ['Patient'] },
        affectsState: true,
        description:
          'Starts, in the background, a payer-to-payer exchange from a registered source payer: $member-match there, a bulk export of the member\'s data, import linked to the local Patient with Provenance. Answers the Task that tracks it, with Content-Location: Task/{id}.',
        parameter: [
          param('localPatient', 'in', 1, '1', 'Reference', 'The member\'s Patient here; must exist'),
          param('sourceIssuerUrl', 'in', 1, '1', 'string', 'The issuer of a registered source payer'),
          param('memberMatch', 'in', 1, '1', undefined, 'Sent to the source\'s $member-match as they are', memberMatchParts()),
          param('export', 'in', 0, '1', undefined, 'Passed to the source\'s export', exchangeExportParts()),
          param('return', 'out', 1, '1', 'Task', 'The exchange\'s Task'),
        ],
      }),
    ],
    [
      'sdh.s2s.invoke-bulk-export',
      definition({
        id: 'sdh-s2s-invoke-bulk-export',
        url: own('sdh-s2s-invoke-bulk-export'),
        name: 'InvokeBulkExport',
        title: 'Payer-to-payer exchange of many members ($sdh.s2s.invoke-bulk-export)',
        code: 'sdh.s2s.invoke-bulk-export',
        levels: { types: ['Group'] },
        affectsState: true,
        description:
          'Starts one exchange per member from one registered source payer: answers a parent Task at once, with one child Task (partOf the parent) per member, each ending on its own; cancelling the parent cancels the children still running.',
        parameter: [
          param('sourceIssuerUrl', 'in', 1, '1', 'string', 'The issuer of a registered source payer'),
          param('export', 'in', 0, '1', undefined, 'Passed to the source\'s export, as in $sdh.s2s.invoke-export', exchangeExportParts()),
          param('member', 'in', 1, '*', undefined, 'One member', [
            param('localPatient', 'in', 1, '1', 'Reference', 'The member\'s Patient here'),
            param('memberMatch', 'in', 1, '1', undefined, 'Sent to the source\'s $member-match as they are', memberMatchParts()),
          ]),
          param('return', 'out', 1, '1', 'Task', 'The parent Task'),
        ],
      }),
    ],
    [
      'sdh.s2s.run-off',
      definition({
        id: 'sdh-s2s-run-off',
        url: own('sdh-s2s-run-off'),
        name: 'RunOff',
        title: 'Run-off of a completed exchange ($sdh.s2s.run-off)',
        code: 'sdh.s2s.run-off',
        levels: { types: ['Task'], instance: true },
        affectsState: true,
        description: 'Exchanges again what changed at the source since a completed exchange (its transactionTime), without matching again. Also run on a schedule when RUNOFF_INTERVAL_HOURS is set.',
        parameter: [param('return', 'out', 1, '1', 'Task', 'The run-off\'s exchange Task')],
      }),
    ],
    [
      'access-grants',
      definition({
        id: 'access-grants',
        url: own('access-grants'),
        name: 'AccessGrants',
        title: 'The partners granted access to a member',
        code: 'access-grants',
        levels: { types: ['Patient'], instance: true },
        description: 'Lists, for service clients, the partner payers that matched this member and the consent each holds.',
        parameter: [param('return', 'out', 1, '1', 'Parameters', 'One `grant` part per partner')],
      }),
    ],
    [
      'revoke-access',
      definition({
        id: 'revoke-access',
        url: own('revoke-access'),
        name: 'RevokeAccess',
        title: 'End a partner\'s access to a member',
        code: 'revoke-access',
        levels: { types: ['Patient'], instance: true },
        affectsState: true,
        description: 'For service clients: ends the access a partner payer holds to this member.',
        parameter: [param('client', 'in', 0, '1', 'string', 'The partner\'s client id; every partner when left out'), param('return', 'out', 1, '1', 'OperationOutcome', 'What was revoked')],
      }),
    ],
  ];
  return ops.map(([name, def]) => ({ name, canonical: def.url as string, levels: { system: def.system, types: def.resource, instance: def.instance }, definition: def }));
}
