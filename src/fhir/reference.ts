/** The Patient id a reference points to (`Patient/1`, or an absolute `…/Patient/1`), or undefined. */
export function patientIdOf(ref: string | undefined, opts: { relativeOnly?: boolean } = {}): string | undefined {
  if (typeof ref !== 'string') return undefined;
  const m = ref.match(opts.relativeOnly ? /^Patient\/([A-Za-z0-9\-.]{1,64})$/ : /^(?:.*\/)?Patient\/([A-Za-z0-9\-.]{1,64})$/);
  return m?.[1];
}
