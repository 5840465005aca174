import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
// A byte-bounded LRU for the read cache (isaacs' lru-cache, already in the tree through glob).
import { LRUCache } from 'lru-cache';
import { BatchConflict, BulkOp, Collection, Database, DuplicateKeyError, Filter, FindOptions, StoredDoc } from '../types';
import { CollectionLayout, FilterCompiler, jsonPath, quoteIdent, sqlValue } from './filter-sql';
import { BlobStore } from '../blobs/blob-store';
import { FileBlobStore } from '../blobs/file-blob-store';
import { GroupCommit } from './group-commit';
import { Checkpointer } from './checkpointer';

type Db = BetterSqlite3.Database;
type Row = { rid: number; doc: string };

/**
 * Documents read by id, as stored (JSON text, parsed again for every reader), each with the stamp
 * of the database's state it was read in: SQLite's `data_version` (which changes when another
 * connection, in any process, commits) and this process's own commit generation. An entry is used
 * only while both are unchanged, so a reader never sees a document older than the last commit.
 */
interface ReadCache {
  entries: LRUCache<string, CacheEntry>;
  stamp(): string;
}
interface CacheEntry {
  stamp: string;
  row: (Row & { id: string }) | null;
  /** The document split for `findTextById`, by field: that field's JSON and the rest's, made once. */
  texts?: Map<string, { text: string; rest: string }>;
}
/** Bytes of JSON the read cache holds at most (a document counts twice: it may also be held split), and the largest document it keeps. */
const READ_CACHE_BYTES = 32 * 1024 * 1024;
const READ_CACHE_MAX_DOC = 256 * 1024;
const WILDCARD = /^([A-Za-z_][A-Za-z0-9_]*)\.\$\*\*$/;
const SIDE_ROWS = 64;
const MAX_STATEMENTS = 200;

/**
 * One collection: a table of `(rid, id, doc)` (the document as JSON, `_id` as `id`), expression
 * indexes for the scalar fields indexed, and for each wildcard index (`s.$**`) a side table holding
 * one row per value of every field under it. Each operation is one statement or one immediate
 * transaction, so a conditional update is atomic across processes sharing the file.
 * A wildcard-indexed subtree is kept in the side table only: matched on, never returned.
 */
class SqliteCollection<T extends StoredDoc> implements Collection<T> {
  private readonly layout: CollectionLayout;
  private compiler: FilterCompiler;
  private readonly statements = new Map<string, BetterSqlite3.Statement>();

  constructor(private readonly db: Db, name: string, private readonly commits: GroupCommit, private readonly cache: ReadCache) {
    this.layout = { table: `c_${name}`, wildcards: new Map() };
    const t = quoteIdent(this.layout.table);
    db.exec(`CREATE TABLE IF NOT EXISTS ${t} (rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL)`);
    // Wildcard indexes persist as their side tables: find them again after a restart.
    const prefix = `${this.layout.table}__`;
    for (const { name: side } of db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'`).all(`${prefix.replace(/_/g, '\\_')}%`) as { name: string }[]) {
      this.layout.wildcards.set(side.slice(prefix.length), side);
    }
    this.compiler = this.newCompiler();
  }

  /** A filter compiler that can ask how many side rows a condition selects (up to a cap). */
  private newCompiler(): FilterCompiler {
    return new FilterCompiler(this.layout, (side, where, params, cap) => (this.stmt(`SELECT count(*) AS n FROM (SELECT 1 FROM ${quoteIdent(side)} WHERE ${where} LIMIT ?)`).get(...params, cap) as { n: number }).n);
  }

  /** Prepared statements by text, the most recently used kept (queries vary in shape: IN lists, filters). */
  private stmt(sql: string): BetterSqlite3.Statement {
    let s = this.statements.get(sql);
    if (s) {
      this.statements.delete(sql);
      this.statements.set(sql, s);
      return s;
    }
    s = this.db.prepare(sql);
    this.statements.set(sql, s);
    if (this.statements.size > MAX_STATEMENTS) this.statements.delete(this.statements.keys().next().value as string);
    return s;
  }

  private get t(): string {
    return quoteIdent(this.layout.table);
  }

  /** The document as stored (without its wildcard subtrees) and the side rows for them. */
  private split(doc: T): { json: string; rows: [string, string, unknown, unknown][] } {
    // Copied without `_id` and the wildcard fields (deleting them from a copy would make it slow to serialise).
    const fields = doc as Record<string, unknown>;
    const rest: Record<string, unknown> = {};
    for (const key of Object.keys(fields)) if (key !== '_id' && !this.layout.wildcards.has(key)) rest[key] = fields[key];
    const rows: [string, string, unknown, unknown][] = [];
    for (const [field, side] of this.layout.wildcards) {
      const subtree = fields[field] as Record<string, unknown> | undefined;
      if (!subtree || typeof subtree !== 'object') continue;
      for (const [p, values] of Object.entries(subtree)) {
        for (const v of Array.isArray(values) ? values : [values]) {
          if (v && typeof v === 'object' && 'lo' in v) rows.push([side, p, (v as { lo: unknown }).lo, (v as { hi: unknown }).hi]);
          else rows.push([side, p, sqlValue(v), 0]);
        }
      }
    }
    return { json: JSON.stringify(rest), rows };
  }

  private writeSide(rid: number, rows: [string, string, unknown, unknown][], replacing: boolean) {
    if (replacing) for (const side of this.layout.wildcards.values()) this.stmt(`DELETE FROM ${quoteIdent(side)} WHERE rid = ?`).run(rid);
    // Up to SIDE_ROWS rows per statement: one call into SQLite for most documents.
    for (let i = 0; i < rows.length; ) {
      const side = rows[i][0];
      let j = i;
      const params: unknown[] = [];
      while (j < rows.length && rows[j][0] === side && j - i < SIDE_ROWS) {
        params.push(rid, rows[j][1], rows[j][2], rows[j][3]);
        j++;
      }
      this.stmt(`INSERT OR IGNORE INTO ${quoteIdent(side)} (rid, p, v, h) VALUES ${Array.from({ length: j - i }, () => '(?, ?, ?, ?)').join(', ')}`).run(...params);
      i = j;
    }
  }

  private insertSync(doc: T) {
    const { json, rows } = this.split(doc);
    let rid: number;
    try {
      rid = Number(this.stmt(`INSERT INTO ${this.t} (id, doc) VALUES (?, ?)`).run(doc._id, json).lastInsertRowid);
    } catch (err) {
      throw mapError(err);
    }
    this.writeSide(rid, rows, false);
  }

  private parse(row: Row & { id: string }): T {
    // The id is kept beside the document, not in it: added to the parsed object, not copied with it.
    const doc = JSON.parse(row.doc) as T;
    doc._id = row.id;
    return doc;
  }

  private firstRid(filter: Filter): number | undefined {
    const { sql, params } = this.compiler.compile(filter);
    const row = this.stmt(`SELECT rid FROM ${this.t} WHERE ${sql} LIMIT 1`).get(...params) as { rid: number } | undefined;
    return row?.rid;
  }

  /** A write: it runs in the next group commit, and is acknowledged once committed. */
  private tx<R>(fn: () => R): Promise<R> {
    return this.commits.run(fn);
  }

  async insertOne(doc: T): Promise<void> {
    await this.tx(() => this.insertSync(doc));
  }

  /** One write of a batch, inside the batch's transaction: whether it was applied. */
  applySync(op: BulkOp): boolean {
    if ('insert' in op) {
      try {
        this.insertSync(op.insert as T);
        return true;
      } catch (err) {
        if (err instanceof DuplicateKeyError) return false;
        throw err;
      }
    }
    if ('remove' in op) return this.removeSync(op.remove) > 0;
    return this.replaceSync(op.filter, op.replace as T, !!op.upsert) > 0;
  }

  private removeSync(filter: Filter): number {
    const { sql, params } = this.compiler.compile(filter);
    const rids = (this.stmt(`SELECT rid FROM ${this.t} WHERE ${sql}`).all(...params) as { rid: number }[]).map((r) => r.rid);
    for (const rid of rids) {
      this.stmt(`DELETE FROM ${this.t} WHERE rid = ?`).run(rid);
      for (const side of this.layout.wildcards.values()) this.stmt(`DELETE FROM ${quoteIdent(side)} WHERE rid = ?`).run(rid);
    }
    return rids.length;
  }

  private replaceSync(filter: Filter, doc: T, upsert: boolean): number {
    const rid = this.firstRid(filter);
    if (rid === undefined) {
      if (!upsert) return 0;
      this.insertSync(doc);
      return 1;
    }
    const { json, rows } = this.split(doc);
    try {
      this.stmt(`UPDATE ${this.t} SET id = ?, doc = ? WHERE rid = ?`).run(doc._id, json, rid);
    } catch (err) {
      throw mapError(err);
    }
    this.writeSide(rid, rows, true);
    return 1;
  }

  async findOne(filter: Filter): Promise<T | null> {
    const [doc] = await this.find(filter, { limit: 1 });
    return doc ?? null;
  }

  async find(filter: Filter, options: FindOptions = {}): Promise<T[]> {
    if (typeof filter._id === 'string' && Object.keys(filter).length === 1 && !options.fields && !options.skip && (options.limit ?? 1) >= 1) return this.byId(filter._id);
    const fields = options.fields?.filter((f) => f !== '_id');
    const { q, params } = this.query(filter, options, (t) => {
      const doc = fields ? `json_object(${fields.map((f) => `'${f.replace(/'/g, "''")}', json_extract(${t}doc, '${jsonPath(f)}')`).join(', ')})` : `${t}doc`;
      return `${t}id AS id, ${doc} AS doc`;
    }, [], !fields);
    return (this.stmt(q).all(...params) as (Row & { id: string })[]).map((r) => this.parse(r));
  }

  async findTexts(filter: Filter, field: string, options: Omit<FindOptions, 'fields'> = {}): Promise<{ _id: string; text: string }[]> {
    // SQLite takes the field out of the stored text (in C, keeping its strings' and numbers' text): no document is parsed here.
    const { q, params } = this.query(filter, options, (t) => `${t}id AS _id, ${t}doc -> ? AS text`, [jsonPath(field)], true);
    return (this.stmt(q).all(...params) as { _id: string; text: string | null }[]).map((r) => ({ _id: r._id, text: r.text ?? 'null' }));
  }

  /**
   * The query for what `select` takes of each matching row (its columns named with the prefix it is
   * given; `selectParams` bound to it), sorted and paged. A page of `large` rows (whole documents)
   * is first chosen by rid and sort keys alone, and only its rows are read: sorting the rows whole
   * would copy each one into the sort, every one that ties on the sort keys included (a thousand
   * resources imported together share their time), and take out what is selected of each.
   */
  private query(filter: Filter, options: Omit<FindOptions, 'fields'>, select: (prefix: string) => string, selectParams: unknown[], large: boolean): { q: string; params: unknown[] } {
    const { sql, params } = this.compiler.compile(filter);
    const page = options.limit || options.skip ? ' LIMIT ? OFFSET ?' : '';
    if (page) params.push(options.limit || -1, options.skip ?? 0);
    const keys = this.compiler.sortKeys(options.sort);
    const order = (by: (i: number) => string) => (keys.length ? ` ORDER BY ${keys.map((k, i) => `${by(i)} ${k.dir}`).join(', ')}` : '');
    if (!(keys.length && page && large)) {
      // Every match is read anyway (no page), or its rows are small: one query, sorted as it reads.
      return { q: `SELECT ${select('')} FROM ${this.t} WHERE ${sql}${order((i) => keys[i].expr)}${page}`, params: [...selectParams, ...params] };
    }
    const chosen = `SELECT rid${keys.map((k, i) => `, ${k.expr} AS k${i}`).join('')} FROM ${this.t} WHERE ${sql}${order((i) => `k${i}`)}${page}`;
    return { q: `SELECT ${select('d.')} FROM (${chosen}) AS p JOIN ${this.t} AS d ON d.rid = p.rid${order((i) => `p.k${i}`)}`, params: [...selectParams, ...params] };
  }

  /** The document with this id (or none), through the read cache: reads by id are the hot path. */
  private byId(id: string): T[] {
    const { row } = this.cached(id);
    return row ? [this.parse(row)] : [];
  }

  private cached(id: string): CacheEntry {
    const key = `${this.layout.table}\u0000${id}`;
    const stamp = this.cache.stamp();
    let hit = this.cache.entries.get(key);
    if (!hit || hit.stamp !== stamp) {
      const row = (this.stmt(`SELECT id, doc FROM ${this.t} WHERE id = ?`).get(id) as (Row & { id: string }) | undefined) ?? null;
      hit = { stamp, row };
      if (!row || row.doc.length <= READ_CACHE_MAX_DOC) this.cache.entries.set(key, hit);
    }
    return hit;
  }

  async findTextById(id: string, field: string): Promise<{ text: string; rest: Partial<T> } | null> {
    const hit = this.cached(id);
    if (!hit.row) return null;
    let split = hit.texts?.get(field);
    if (!split) {
      const { [field]: value, ...rest } = this.parse(hit.row) as Record<string, unknown>;
      split = { text: JSON.stringify(value) ?? 'null', rest: JSON.stringify(rest) };
      (hit.texts ??= new Map()).set(field, split);
    }
    // The rest is small (the version, the time, the hash): parsed for each caller, who may change it.
    return { text: split.text, rest: JSON.parse(split.rest) as Partial<T> };
  }

  async count(filter: Filter): Promise<number> {
    const { sql, params } = this.compiler.compile(filter);
    return (this.stmt(`SELECT count(*) AS n FROM ${this.t} WHERE ${sql}`).get(...params) as { n: number }).n;
  }

  async replaceOne(filter: Filter, doc: T, options: { upsert?: boolean } = {}): Promise<number> {
    return this.tx(() => this.replaceSync(filter, doc, !!options.upsert));
  }

  async updateOne(filter: Filter, set: Record<string, unknown>): Promise<number> {
    const entries = Object.entries(set);
    if (entries.some(([k]) => k === '_id' || this.layout.wildcards.has(k.split('.')[0]))) throw new Error('updateOne cannot $set _id or a wildcard-indexed field');
    return this.tx(() => {
      const rid = this.firstRid(filter);
      if (rid === undefined) return 0;
      if (entries.length) {
        const assignments = entries.map(() => '?, json(?)').join(', ');
        const params = entries.flatMap(([k, v]) => [jsonPath(k), JSON.stringify(v === undefined ? null : v)]);
        try {
          this.stmt(`UPDATE ${this.t} SET doc = json_set(doc, ${assignments}) WHERE rid = ?`).run(...params, rid);
        } catch (err) {
          throw mapError(err);
        }
      }
      return 1;
    });
  }

  async deleteMany(filter: Filter): Promise<number> {
    return this.tx(() => this.removeSync(filter));
  }

  async createIndex(fields: string[], options: { unique?: boolean } = {}): Promise<void> {
    const wild = fields.length === 1 ? fields[0].match(WILDCARD) : null;
    if (wild) {
      if (this.layout.wildcards.has(wild[1])) return;
      if ((this.stmt(`SELECT count(*) AS n FROM ${this.t}`).get() as { n: number }).n > 0) throw new Error(`a wildcard index on ${wild[1]} must be created before the first document`);
      const side = `${this.layout.table}__${wild[1]}`;
      const s = quoteIdent(side);
      this.db.exec(
        // Clustered on (p, v): a condition on a field reads one range of it. `h` is a range's high end (0 otherwise).
        `CREATE TABLE IF NOT EXISTS ${s} (p TEXT NOT NULL, v NOT NULL, h NOT NULL, rid INTEGER NOT NULL, PRIMARY KEY (p, v, h, rid)) WITHOUT ROWID;` +
          `CREATE INDEX IF NOT EXISTS ${quoteIdent(`${side}_rid`)} ON ${s} (rid);`,
      );
      this.layout.wildcards.set(wild[1], side);
      this.compiler = this.newCompiler();
      this.statements.clear();
      return;
    }
    const exprs = fields.map((f) => (f === '_id' ? 'id' : `json_extract(doc, '${jsonPath(f)}')`));
    const name = `${this.layout.table}_${fields.join('_').replace(/[^A-Za-z0-9_]/g, '_')}${options.unique ? '_u' : ''}`;
    this.db.exec(`CREATE ${options.unique ? 'UNIQUE ' : ''}INDEX IF NOT EXISTS ${quoteIdent(name)} ON ${this.t} (${exprs.join(', ')})`);
  }
}

function mapError(err: unknown): unknown {
  const code = (err as { code?: string })?.code;
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return new DuplicateKeyError((err as Error).message);
  return err;
}

/**
 * The embedded engine: SQLite through better-sqlite3, one file `store.sqlite` under DATA_DIR (or in
 * memory when none is given). Data lives on disk, not in memory; WAL journaling, so readers never
 * wait for the writer and a write is durable once acknowledged, even if the process is killed
 * (`synchronous=NORMAL`: an OS crash may lose the last transactions, never corrupt the file).
 * Several processes may share the file.
 */
export class SqliteDatabase implements Database {
  readonly engine = 'embedded' as const;
  readonly blobs: BlobStore;
  /** In memory, blobs go to a temporary folder, removed on close. */
  private readonly tempBlobs?: string;
  private readonly db: Db;
  private readonly commits: GroupCommit;
  private readonly checkpointer?: Checkpointer;
  private readonly collections = new Map<string, SqliteCollection<StoredDoc>>();
  private readonly cache: ReadCache;

  constructor(dataDir: string | undefined) {
    if (dataDir) fs.mkdirSync(dataDir, { recursive: true });
    this.db = new BetterSqlite3(dataDir ? path.join(dataDir, 'store.sqlite') : ':memory:');
    if (!dataDir) this.tempBlobs = fs.mkdtempSync(path.join(os.tmpdir(), 'p2p-blobs-'));
    this.blobs = new FileBlobStore(dataDir ? path.join(dataDir, 'blobs') : (this.tempBlobs as string));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 10000');
    this.db.pragma('cache_size = -32000'); // 32 MB of page cache
    this.db.pragma('temp_store = MEMORY');
    // The WAL is copied into the database by another thread, soon after each commit; the writer
    // itself checkpoints only if the WAL reaches about 80 MB (that thread fell behind or died).
    if (dataDir) this.checkpointer = new Checkpointer(path.join(dataDir, 'store.sqlite'));
    this.db.pragma(`wal_autocheckpoint = ${this.checkpointer ? 20000 : 10000}`);
    this.db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`); // the WAL file shrinks back to 64 MB once restarted
    this.forgetStatistics();
    this.commits = new GroupCommit(this.db, () => this.checkpointer?.committed());
    const dataVersion = this.db.prepare('PRAGMA data_version').pluck();
    this.cache = {
      entries: new LRUCache({ maxSize: READ_CACHE_BYTES, sizeCalculation: (e) => 2 * (e.row?.doc.length ?? 0) + 64 }),
      stamp: () => `${dataVersion.get()}:${this.commits.generation}`,
    };
    const cache = new Map<string, RegExp>();
    this.db.function('regexp_match', { deterministic: true }, (source: unknown, flags: unknown, value: unknown) => {
      if (typeof value !== 'string') return 0;
      const key = `${flags}/${source}`;
      let re = cache.get(key);
      if (!re) {
        re = new RegExp(String(source), String(flags));
        if (cache.size > 1000) cache.clear();
        cache.set(key, re);
      }
      return re.test(value) ? 1 : 0;
    });
  }

  /**
   * The query planner works without statistics (`ANALYZE`): every query is written to be served by
   * an index, and statistics taken while a table was small (kept until the next ANALYZE, and a
   * server's tables grow) make SQLite scan it once it is large: with a few rows recorded, a batch's
   * `id IN (…)` read the whole collection. Statistics an earlier version left are dropped.
   */
  private forgetStatistics(): void {
    const tables = this.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('sqlite_stat1', 'sqlite_stat4')").pluck().all() as string[];
    const held = tables.filter((t) => this.db.prepare(`SELECT 1 FROM ${t} LIMIT 1`).get());
    if (held.length === 0) return;
    for (const t of held) this.db.exec(`DELETE FROM ${t}`);
    this.db.exec('ANALYZE sqlite_schema'); // the planner reloads them: none
  }

  collection<T extends StoredDoc = StoredDoc>(name: string): Collection<T> {
    return this.sqliteCollection(name) as unknown as Collection<T>;
  }

  private sqliteCollection(name: string): SqliteCollection<StoredDoc> {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new Error(`invalid collection name ${name}`);
    let c = this.collections.get(name);
    if (!c) {
      c = new SqliteCollection<StoredDoc>(this.db, name, this.commits, this.cache);
      this.collections.set(name, c);
    }
    return c;
  }

  async atomicWrite(ops: BulkOp[]): Promise<void> {
    await this.commits.run(() => {
      ops.forEach((op, i) => {
        if (!this.sqliteCollection(op.collection).applySync(op)) throw new BatchConflict(i);
      });
    });
  }

  async bulkWrite(ops: BulkOp[]): Promise<boolean[]> {
    return this.commits.run(() => {
      const applied: boolean[] = [];
      for (const op of ops) applied.push(op.after !== undefined && !applied[op.after] ? false : this.sqliteCollection(op.collection).applySync(op));
      return applied;
    });
  }

  async close(): Promise<void> {
    this.collections.clear();
    await this.checkpointer?.close();
    if (this.db.open) {
      this.commits.flush();
      this.db.close();
    }
    if (this.tempBlobs) fs.rmSync(this.tempBlobs, { recursive: true, force: true });
  }
}
