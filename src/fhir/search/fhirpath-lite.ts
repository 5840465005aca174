/**
 * A tiny evaluator for the subset of FHIRPath used by the R4 search parameter expressions:
 * member paths, choice types (`x as T`, `x.as(T)`, `x.ofType(T)`), reference type filters
 * (`where(resolve() is T)`) and equality filters (`where(system='email')`).
 * Anything else does not compile, so the parameter is not advertised.
 */
export type PathStep =
  | { kind: 'field'; name: string; choices?: string[] }
  | { kind: 'refType'; type: string }
  | { kind: 'whereEq'; field: string; value: string };

/**
 * Compiles one branch of a search parameter's expression. `choices` tells the type suffixes of a
 * choice element (`Observation.effective` is `effectiveDateTime`, `effectivePeriod`… in JSON).
 */
export function compilePath(expression: string, choices?: (path: string[], name: string) => string[] | undefined): PathStep[] | null {
  let e = expression.trim();
  // "(A.b as T)" and "(A.b as T).c" become "A.b.as(T)" and "A.b.as(T).c"
  e = e.replace(/\(([^()]*?) as (\w+)\)/g, '$1.as($2)');
  e = e.replace(/ as (\w+)$/, '.as($1)');
  while (e.startsWith('(') && e.endsWith(')') && balanced(e.slice(1, -1))) e = e.slice(1, -1);
  const segments = splitSegments(e);
  if (!segments || segments.length < 2) return null;
  const steps: PathStep[] = [];
  // The element path so far, while it can be followed through the definitions (not past a choice).
  let path: string[] | undefined = [segments[0]];
  for (const seg of segments.slice(1)) {
    let m: RegExpMatchArray | null;
    if ((m = seg.match(/^(\w+)$/))) {
      const typesOf: string[] | undefined = path && choices ? choices(path, m[1]) : undefined;
      steps.push(typesOf ? { kind: 'field', name: m[1], choices: typesOf } : { kind: 'field', name: m[1] });
      path = path && !typesOf ? [...path, m[1]] : undefined;
    } else if ((m = seg.match(/^(?:as|ofType)\((\w+)\)$/))) {
      const prev = steps[steps.length - 1];
      if (!prev || prev.kind !== 'field') return null;
      const typed = prev.name + m[1][0].toUpperCase() + m[1].slice(1);
      steps[steps.length - 1] = { kind: 'field', name: typed };
      path = undefined;
    } else if ((m = seg.match(/^where\(resolve\(\) is (\w+)\)$/))) {
      steps.push({ kind: 'refType', type: m[1] });
    } else if ((m = seg.match(/^where\((\w+) ?= ?'([^']*)'\)$/))) {
      steps.push({ kind: 'whereEq', field: m[1], value: m[2] });
    } else {
      return null;
    }
  }
  return steps;
}

function balanced(s: string): boolean {
  let depth = 0;
  for (const ch of s) {
    if (ch === '(') depth++;
    else if (ch === ')' && --depth < 0) return false;
  }
  return depth === 0;
}

function splitSegments(e: string): string[] | null {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of e) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (depth < 0) return null;
    if (ch === '.' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return depth === 0 && out.every((s) => s.length > 0) ? out : null;
}

/** Evaluates compiled steps against a resource; returns the matching elements, arrays flattened. */
export function evaluatePath(resource: unknown, steps: PathStep[]): unknown[] {
  let values: unknown[] = [resource];
  for (const step of steps) {
    const next: unknown[] = [];
    for (const v of values) {
      if (v === null || typeof v !== 'object') continue;
      const obj = v as Record<string, unknown>;
      if (step.kind === 'field') {
        for (const name of step.choices ? step.choices.map((c) => step.name + c) : [step.name]) {
          const child = obj[name];
          // A loop, not a spread: an element may repeat more times than a call takes arguments.
          if (Array.isArray(child)) for (const c of child) next.push(c);
          else if (child !== undefined && child !== null) next.push(child);
        }
      } else if (step.kind === 'refType') {
        const ref = obj.reference;
        if (typeof ref === 'string' && referenceType(ref) === step.type) next.push(v);
      } else if (obj[step.field] === step.value) {
        next.push(v);
      }
    }
    values = next;
  }
  return values;
}

/** `Patient/1`, `http://x/fhir/Patient/1/_history/2` → `Patient`; anything else → undefined. */
export function referenceType(ref: string): string | undefined {
  const m = ref.match(/(?:^|\/)([A-Z][A-Za-z]+)\/[A-Za-z0-9\-.]{1,64}(?:\/_history\/[^/]+)?$/);
  return m ? m[1] : undefined;
}
