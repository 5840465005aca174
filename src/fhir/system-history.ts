import { Router } from 'express';
import { asyncHandler, sendResource } from './http';
import { historyBundle } from './bundle';
import { parseHistoryQuery, visibleHistory } from './history-query';
import { RESOURCE_TYPES } from './resource-types';
import { ResourceStore, HistoryEntry } from '../store/resource-store';
import { AccessPolicy } from '../access/access-policy';
import { AUTHENTICATED, Guard } from '../auth/guard';
import { allows } from '../auth/scopes';
import type { Request } from 'express';
import type { Resource } from 'fhir/r4';
import type { DisclosureInteraction } from '../audit/audit-log';

/**
 * `GET [base]/_history`: the changes to every type the caller may read, newest first, paged with
 * `_count`/`_offset`, narrowed by `_since`. A partner sees the versions of what it may see now.
 */
export function systemHistoryRoutes(d: {
  guard: Guard;
  store: ResourceStore;
  access: AccessPolicy;
  baseUrl: () => string;
  defaultPageSize: number;
  maxPageSize: number;
  /** Told what a partner was shown (the audit trail of disclosures). */
  onPartnerRead?: (req: Request, interaction: DisclosureInteraction, type: string, resources: Resource[]) => Promise<void>;
}): Router {
  const router = Router({ caseSensitive: true });
  router.get(
    '/_history',
    d.guard.require(AUTHENTICATED),
    asyncHandler(async (req, res) => {
      const { count, offset, since } = parseHistoryQuery(req.query as Record<string, unknown>, d.defaultPageSize, d.maxPageSize);
      const scope = await d.access.scopeFor(req.access);
      const entries: HistoryEntry[] = [];
      let total = 0;
      for (const type of RESOURCE_TYPES) {
        if (!allows(req.access?.scope ?? '', type, 'r')) continue;
        const restriction = scope.filter(type);
        if (restriction === null) continue;
        let ids: string[] | undefined;
        if (scope.members) {
          ids = [];
          for await (const r of d.store.stream(type, restriction)) ids.push(r.id as string);
          if (ids.length === 0) continue;
        }
        // The newest offset+count of each type are enough to page the merge; a partner's total counts only the versions it sees.
        const window = { since, count: offset + count, offset: 0 };
        const page = scope.members
          ? await visibleHistory(d.store, type, { ids }, window, (e) => !!e.resource && scope.canSee(e.resource))
          : await d.store.historyOf(type, undefined, { ...window, ids });
        total += page.total;
        entries.push(...page.entries.map((e) => (e.resource ? { ...e, resource: scope.view(e.resource) } : e)));
      }
      entries.sort((a, b) => (a.lastUpdated < b.lastUpdated ? 1 : a.lastUpdated > b.lastUpdated ? -1 : 0));
      const shown = entries.slice(offset, offset + count);
      const disclosed = scope.members ? shown.flatMap((e) => (e.resource ? [e.resource] : [])) : [];
      if (disclosed.length) await d.onPartnerRead?.(req, 'history-system', 'Resource', disclosed);
      sendResource(res, 200, historyBundle(d.baseUrl(), shown, total));
    }),
  );
  return router;
}
