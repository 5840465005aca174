import fs from 'node:fs';

/** Reads a JSON file holding an array (a registry); a missing file is an empty registry. */
export function readJsonArrayFile<T>(file: string, what: string): T[] {
  if (!fs.existsSync(file)) return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(parsed)) throw new Error(`${file} must hold an array of ${what}`);
  return parsed as T[];
}
