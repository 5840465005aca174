/**
 * Text a source payer wrote (an OperationOutcome's diagnostics, an error body, X-Progress, a type
 * name…) before it reaches a Task or a log line. The rule:
 *
 * - Tasks (statusReason, notes, businessStatus, `source-error` outputs) carry it only through
 *   `sourceText`: at most `max` characters (200 by default), control and format characters
 *   (C0, C1, DEL, bidirectional overrides, zero-width) replaced by a space, `<` and `>` removed, so
 *   no console that renders it as HTML can be given markup, and whatever looks like member data
 *   replaced by `[redacted]`: dates, runs of 4 or more digits (ids, phone and social security
 *   numbers), e-mail addresses, and, where the exchange still knows them, the member's submitted
 *   names, birth date and identifiers (`redactKnown`).
 * - Log lines never carry it: a source's error is logged as what was asked, the HTTP status and the
 *   OperationOutcome's issue code (a FHIR code, checked to be one), never its free text.
 *
 * JSON needs no HTML escaping; removing the angle brackets is what keeps a rendering console safe.
 */

export const REDACTED = '[redacted]';

/** Control and invisible formatting characters: C0, DEL, C1, zero-width, bidi embeddings/overrides/isolates, BOM. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/g;
const MARKUP = /[<>]/g;
const EMAIL = /[^\s@]{1,64}@[^\s@]{1,255}/g;
/** Dates in the usual spellings: 1975-05-05, 05/05/1975, 5.5.75, 19750505 (the last as a digit run). */
const DATE = /\b\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}\b/g;
const DIGITS = /\d[\d\s-]{2,}\d/g;

const shorten = (text: string, max: number) => (text.length > max ? `${text.slice(0, Math.max(0, max - 1))}…` : text);

/** Only the characters a console may show: no controls, no markup, spaces collapsed, at most `max` characters. */
export function plainText(value: unknown, max = 200): string {
  // A bounded slice first: nothing below works on more than a few times `max`.
  const raw = typeof value === 'string' ? value : value === undefined || value === null ? '' : String(value);
  const text = raw.slice(0, max * 4).replace(CONTROL, ' ').replace(MARKUP, '').replace(/\s+/g, ' ').trim();
  return shorten(text, max);
}

/** A source's free text as a Task may show it: plain, short, and with what looks like member data redacted. */
export function sourceText(value: unknown, max = 200): string {
  const raw = typeof value === 'string' ? value : value === undefined || value === null ? '' : String(value);
  const text = raw
    .slice(0, max * 4)
    .replace(CONTROL, ' ')
    .replace(MARKUP, '')
    .replace(EMAIL, REDACTED)
    .replace(DATE, REDACTED)
    .replace(DIGITS, (run) => ((run.match(/\d/g) ?? []).length >= 4 ? REDACTED : run))
    .replace(/\s+/g, ' ')
    .trim();
  return shorten(text, max) || 'no detail';
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** `text` with each of `terms` (names, a birth date, identifiers the exchange submitted) replaced, case-insensitively. */
export function redactKnown(text: string, terms: Iterable<string>): string {
  let out = text;
  const sorted = [...new Set([...terms].map((t) => t.trim()).filter((t) => t.length >= 2))].sort((a, b) => b.length - a.length);
  // Whole words only: a member named Ann leaves "cannot" alone.
  for (const term of sorted) out = out.replace(new RegExp(`(?<![\\p{L}\\p{N}])${escapeRegExp(term)}(?![\\p{L}\\p{N}])`, 'giu'), REDACTED);
  return out;
}

/** Every string of a value (the submitted MemberPatient, CoverageToMatch…), for `redactKnown`: names, dates, identifiers. */
export function termsOf(value: unknown, out: string[] = [], depth = 0): string[] {
  if (depth > 12 || out.length > 500) return out;
  if (typeof value === 'string') {
    // Codes, systems and references are not member data and too common to redact.
    if (!/^(https?:|urn:|Patient\/|Coverage\/|Organization\/|#)/.test(value) && value.length <= 200) out.push(value);
  } else if (Array.isArray(value)) for (const v of value) termsOf(v, out, depth + 1);
  else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      if (['resourceType', 'system', 'url', 'use', 'status', 'code', 'gender', 'state', 'country', 'type'].includes(k) || (k === 'name' && typeof v === 'string')) continue;
      termsOf(v, out, depth + 1);
    }
  }
  return out;
}

/** A FHIR code from a source (an issue's `code`), or undefined when it is not one: safe for a log line. */
export function fhirCode(value: unknown): string | undefined {
  return typeof value === 'string' && /^[a-z][a-z0-9-]{0,39}$/.test(value) ? value : undefined;
}
