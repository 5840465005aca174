/** A FHIR date, dateTime or instant as the range of instants it covers, in epoch milliseconds. */
export interface DateRange {
  lo: number;
  hi: number;
}

const DATE_RE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/** Parses a FHIR date/dateTime/instant (dates without a zone are taken as UTC); undefined when malformed. */
export function parseFhirDate(value: string): DateRange | undefined {
  const m = DATE_RE.exec(value.trim());
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac, tz] = m;
  const year = Number(y);
  const month = mo ? Number(mo) - 1 : 0;
  if (mo && (month < 0 || month > 11)) return undefined;
  const day = d ? Number(d) : 1;
  if (d && (day < 1 || day > 31)) return undefined;
  let offsetMs = 0;
  if (tz && tz !== 'Z') {
    const sign = tz[0] === '-' ? -1 : 1;
    offsetMs = sign * (Number(tz.slice(1, 3)) * 60 + Number(tz.slice(4, 6))) * 60_000;
  }
  const ms = frac ? Number(frac.slice(0, 3).padEnd(3, '0')) : 0;
  // An impossible date or time (2021-02-31, T25:61) is not read as another one.
  if (d && day > new Date(Date.UTC(year, month + 1, 0)).getUTCDate()) return undefined;
  if ((h && Number(h) > 23) || (mi && Number(mi) > 59) || (s && Number(s) > 59)) return undefined;
  if (tz && tz !== 'Z' && (Number(tz.slice(1, 3)) > 14 || Number(tz.slice(4, 6)) > 59)) return undefined;
  const lo = Date.UTC(year, month, day, h ? Number(h) : 0, mi ? Number(mi) : 0, s ? Number(s) : 0, ms) - offsetMs;
  let hi: number;
  if (!mo) hi = Date.UTC(year + 1, 0, 1) - 1;
  else if (!d) hi = Date.UTC(year, month + 1, 1) - 1;
  else if (!h) hi = Date.UTC(year, month, day + 1) - 1;
  else if (!s) hi = lo + 60_000 - 1;
  else if (!frac) hi = lo + 999;
  else hi = lo;
  if (Number.isNaN(lo)) return undefined;
  return { lo, hi };
}

/** A FHIR instant (a date with a time, e.g. 2024-01-01T00:00:00Z) in epoch milliseconds; undefined when not one. */
export function parseInstant(value: string): number | undefined {
  return /T/.test(value) ? parseFhirDate(value)?.lo : undefined;
}
