/**
 * Server state through TanStack Query: one cache, refetched after every change (mutations
 * invalidate what they touch) and polled where numbers move on their own (spend, usage).
 */

import { useMutation, useQuery, useQueryClient, type QueryKey } from "@tanstack/react-query";
import { api, API, ApiError, request } from "./client";
import type {
  AuditPage,
  BudgetEffect,
  BudgetIn,
  BudgetOut,
  ExplainOut,
  ExtraView,
  FairShare,
  ForecastOut,
  ImportOut,
  KeyCreated,
  KeyOut,
  LeaversOut,
  LiveOut,
  MeOut,
  MemberOut,
  OfferOut,
  PeopleOut,
  PolicyOut,
  ProviderOut,
  ScopeOut,
  TreeOut,
  UnitLimits,
  UnitLimitsOut,
  UnitOut,
  UsageReportOut,
  UserUsageOut,
} from "./types";

export const LIVE_MS = 5_000; // spend and usage move with every request: poll them
export const TREE_MS = 10_000;
export const LIMITS_LIVE_MS = 3_000; // limit windows are a minute long: poll them more often than spend

const enc = encodeURIComponent;

export const keys = {
  me: ["me"] as const,
  tree: ["tree"] as const,
  unit: (id: string) => ["unit", id] as const,
  budget: (id: string) => ["budget", id] as const,
  extras: (id: string) => ["extras", id] as const,
  members: (id: string) => ["members", id] as const,
  admins: (id: string) => ["admins", id] as const,
  policy: (id: string) => ["policy", id] as const,
  providers: ["providers"] as const,
  myKeys: ["keys", "mine"] as const,
  unitKeys: (id: string) => ["keys", "unit", id] as const,
  explain: (unit: string, user?: string) => ["explain", unit, user ?? ""] as const,
  audit: (filters: object) => ["audit", filters] as const,
  openapi: ["openapi"] as const,
  limits: (id: string) => ["limits", id] as const,
  live: (unit: string, user: string) => ["limits", "live", unit, user] as const,
  fairShare: ["fair-share"] as const,
  people: (id: string, after: string | null) => ["people", id, after ?? ""] as const,
  leavers: (id: string) => ["leavers", id] as const,
};

function noRetryOnClientError(count: number, error: unknown): boolean {
  if (error instanceof ApiError && error.status < 500) return false;
  return count < 2;
}

export const queryDefaults = {
  retry: noRetryOnClientError,
  staleTime: 2_000,
  refetchOnWindowFocus: true,
};

export function useMe() {
  return useQuery({ queryKey: keys.me, queryFn: () => api.get<MeOut>(`${API}/me`), retry: false });
}

export function useTree(enabled = true) {
  return useQuery({
    queryKey: keys.tree,
    queryFn: () => api.get<TreeOut>(`${API}/units/tree`),
    refetchInterval: TREE_MS,
    enabled,
  });
}

export function useUnit(id: string | undefined) {
  return useQuery({
    queryKey: keys.unit(id ?? ""),
    queryFn: () => api.get<UnitOut>(`${API}/units/${enc(id!)}`),
    enabled: !!id,
    refetchInterval: LIVE_MS,
  });
}

export function useBudget(id: string) {
  return useQuery({ queryKey: keys.budget(id), queryFn: () => api.get<BudgetOut>(`${API}/units/${enc(id)}/budget`) });
}

export function useExtras(id: string) {
  return useQuery({
    queryKey: keys.extras(id),
    queryFn: () => api.get<ExtraView[]>(`${API}/units/${enc(id)}/extras`),
    refetchInterval: LIVE_MS,
  });
}

export function useMembers(id: string, enabled = true) {
  return useQuery({
    queryKey: keys.members(id),
    queryFn: () => api.get<MemberOut[]>(`${API}/units/${enc(id)}/members`),
    enabled,
  });
}

/** A unit's people with where they came from, their memberships with dates and last use; a page at a time. */
export function usePeople(id: string, after: string | null, enabled = true) {
  return useQuery({
    queryKey: keys.people(id, after),
    queryFn: () => api.get<PeopleOut>(`${API}/units/${enc(id)}/people`, { limit: 100, ...(after ? { after } : {}) }),
    enabled,
  });
}

/** Keys of a subtree that worked after their membership ended: should be none. */
export function useLeavers(id: string, enabled = true) {
  return useQuery({
    queryKey: keys.leavers(id),
    queryFn: () => api.get<LeaversOut>(`${API}/units/${enc(id)}/leavers`),
    enabled: enabled && !!id,
    refetchInterval: LIVE_MS * 6,
  });
}

export function useAdmins(id: string, enabled = true) {
  return useQuery({
    queryKey: keys.admins(id),
    queryFn: () => api.get<ScopeOut[]>(`${API}/units/${enc(id)}/admins`),
    enabled,
  });
}

export function usePolicy(id: string) {
  return useQuery({ queryKey: keys.policy(id), queryFn: () => api.get<PolicyOut>(`${API}/units/${enc(id)}/models`) });
}

export function useProviders(enabled = true) {
  return useQuery({ queryKey: keys.providers, queryFn: () => api.get<ProviderOut[]>(`${API}/providers`), enabled });
}

export function useMyKeys() {
  return useQuery({ queryKey: keys.myKeys, queryFn: () => api.get<KeyOut[]>(`${API}/keys`) });
}

export function useUnitKeys(id: string, enabled = true) {
  return useQuery({
    queryKey: keys.unitKeys(id),
    queryFn: () => api.get<KeyOut[]>(`${API}/units/${enc(id)}/keys`),
    enabled,
  });
}

export function useExplain(unit: string, user?: string) {
  return useQuery({
    queryKey: keys.explain(unit, user),
    queryFn: () => api.get<ExplainOut>(`${API}/explain`, { unit, user }),
    refetchInterval: LIVE_MS,
  });
}

export interface AuditFilters {
  unit?: string;
  actor?: string;
  action?: string;
  target?: string;
  since?: string;
  until?: string;
  before_id?: number;
}

export function useAudit(filters: AuditFilters) {
  return useQuery({
    queryKey: keys.audit(filters),
    queryFn: () => api.get<AuditPage>(`${API}/audit`, { ...filters, limit: 50 }),
    refetchInterval: LIVE_MS * 2,
  });
}

/** A mutation that refetches what it changed once it succeeds, so no page needs a reload. */
export function useChange<TVars, TOut>(fn: (vars: TVars) => Promise<TOut>, invalidate: (vars: TVars) => QueryKey[]) {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: fn,
    onSuccess: async (_out, vars) => {
      await Promise.all(invalidate(vars).map((queryKey) => qc.invalidateQueries({ queryKey })));
    },
  });
}

const orgKeys = (unitId: string): QueryKey[] => [keys.tree, ["unit"], keys.budget(unitId), keys.extras(unitId), ["audit"], ["explain"]];

export function useSaveBudget(unitId: string) {
  return useChange((b: BudgetIn) => api.put<BudgetEffect>(`${API}/units/${enc(unitId)}/budget`, b), () => orgKeys(unitId));
}

export function previewBudget(unitId: string, b: BudgetIn, signal?: AbortSignal): Promise<BudgetEffect> {
  return request<BudgetEffect>(`${API}/units/${enc(unitId)}/budget/preview`, { method: "POST", body: b, signal });
}

export interface ExtraBody {
  id?: string;
  metric: "cost" | "tokens";
  amount: number;
  valid_from: string;
  valid_to: string;
  chargeback: string | null;
}

export function useSaveExtra(unitId: string) {
  return useChange(
    ({ body, existing }: { body: ExtraBody; existing: boolean }) => {
      if (existing) {
        const { id, ...rest } = body;
        return api.put<ExtraView>(`${API}/units/${enc(unitId)}/extras/${enc(id!)}`, rest);
      }
      return api.post<ExtraView>(`${API}/units/${enc(unitId)}/extras`, body);
    },
    () => orgKeys(unitId),
  );
}

export function useDeleteExtra(unitId: string) {
  return useChange((id: string) => api.del<void>(`${API}/units/${enc(unitId)}/extras/${enc(id)}`), () => orgKeys(unitId));
}

export function usePutMember(unitId: string) {
  return useChange(
    (v: { user_id: string; role: string; profile?: { email?: string; name?: string } | null }) =>
      api.put<MemberOut>(`${API}/units/${enc(unitId)}/members/${enc(v.user_id)}`, {
        role: v.role,
        ...(v.profile ? { profile: v.profile } : {}),
      }),
    () => [keys.members(unitId), ["audit"]],
  );
}

export function useRemoveMember(unitId: string) {
  return useChange((userId: string) => api.del<void>(`${API}/units/${enc(unitId)}/members/${enc(userId)}`), () => [
    keys.members(unitId),
    ["keys"],
    ["audit"],
  ]);
}

export function useImportRoster(unitId: string) {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: ({ csv, replace }: { csv: string; replace: boolean }) =>
      request<ImportOut>(`${API}/units/${enc(unitId)}/members/import`, {
        method: "POST",
        rawBody: csv,
        contentType: "text/csv",
        query: { replace },
      }),
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: keys.members(unitId) });
      void qc.invalidateQueries({ queryKey: ["audit"] });
    },
  });
}

export function useGrant(unitId: string) {
  return useChange<{ role: string; user_id: string; revoke?: boolean }, ScopeOut | void>(
    (v) =>
      v.revoke
        ? api.del<void>(`${API}/units/${enc(unitId)}/admins/${enc(v.role)}/${enc(v.user_id)}`)
        : api.put<ScopeOut>(`${API}/units/${enc(unitId)}/admins/${enc(v.role)}/${enc(v.user_id)}`),
    () => [keys.admins(unitId), ["audit"]],
  );
}

export function useSavePolicy(unitId: string) {
  return useChange(
    (v: { models: string[] | null; default_model: string | null }) => api.put<PolicyOut>(`${API}/units/${enc(unitId)}/models`, v),
    () => [["policy"], keys.tree, ["unit"], keys.me, ["audit"]],
  );
}

export function useSaveModelPrice() {
  return useChange(
    (v: { provider: string; model: string; body: Record<string, unknown> }) =>
      api.put<OfferOut>(`${API}/providers/${enc(v.provider)}/models/${v.model.split("/").map(enc).join("/")}`, v.body),
    () => [keys.providers, ["limits", "live"], ["audit"]],
  );
}

export function useCreateKey() {
  return useChange(
    (v: { unit_id: string; name: string | null }) => api.post<KeyCreated>(`${API}/keys`, v),
    () => [keys.myKeys, ["audit"]],
  );
}

export function useRevokeKey() {
  return useChange((id: string) => api.del<KeyOut>(`${API}/keys/${enc(id)}`), () => [keys.myKeys, ["keys"], ["audit"]]);
}

export function useRevokeUnitKey(unitId: string) {
  return useChange((id: string) => api.del<KeyOut>(`${API}/units/${enc(unitId)}/keys/${enc(id)}`), () => [
    keys.unitKeys(unitId),
    ["audit"],
  ]);
}

export interface Range {
  start?: string;
  end?: string;
  bucket?: "hour" | "day" | "month";
}

function usageQuery(unitId: string, groupBy: string[], range: Range): string {
  const params = new URLSearchParams();
  for (const g of groupBy) params.append("group_by", g);
  if (range.start) params.set("start", range.start);
  if (range.end) params.set("end", range.end);
  if (range.bucket) params.set("bucket", range.bucket);
  return `${API}/units/${enc(unitId)}/usage?${params.toString()}`;
}

export function useUsage(unitId: string, groupBy: string[], range: Range, enabled = true) {
  return useQuery({
    queryKey: ["usage", unitId, groupBy, range],
    queryFn: () => api.get<UsageReportOut>(usageQuery(unitId, groupBy, range)),
    refetchInterval: LIVE_MS,
    enabled: enabled && !!unitId,
    placeholderData: (prev) => prev,
  });
}

export function useTopUsers(unitId: string, range: Range, enabled = true) {
  return useQuery({
    queryKey: ["usage", "top", unitId, range],
    queryFn: () => api.get<UserUsageOut[]>(`${API}/units/${enc(unitId)}/usage/top-users`, { start: range.start, end: range.end, limit: 10 }),
    refetchInterval: LIVE_MS,
    enabled: enabled && !!unitId,
    placeholderData: (prev) => prev,
  });
}

export function useForecast(unitId: string, enabled = true) {
  return useQuery({
    queryKey: ["usage", "forecast", unitId],
    queryFn: () => api.get<ForecastOut[]>(`${API}/units/${enc(unitId)}/usage/forecast`),
    refetchInterval: LIVE_MS * 6,
    enabled: enabled && !!unitId,
  });
}

export function useMyUsage(enabled = true) {
  return useQuery({
    queryKey: ["usage", "mine"],
    queryFn: () => api.get<UsageReportOut>(`${API}/me/usage`),
    refetchInterval: LIVE_MS,
    enabled,
  });
}

export function exportPath(unitId: string): string {
  return `${API}/units/${enc(unitId)}/export`;
}

export function useUnitLimits(id: string) {
  return useQuery({ queryKey: keys.limits(id), queryFn: () => api.get<UnitLimitsOut>(`${API}/units/${enc(id)}/limits`) });
}

export function useSaveUnitLimits(unitId: string) {
  return useChange((b: UnitLimits) => api.put<UnitLimitsOut>(`${API}/units/${enc(unitId)}/limits`, b), () => [
    keys.limits(unitId),
    ["limits", "live"],
    ["audit"],
  ]);
}

/**
 * Live use against limits: a unit's path (and one member's, given `user`), or with no unit the
 * catalog's provider and model limits. Polled only while the page is visible (TanStack pauses
 * interval refetches in a background tab).
 */
export function useLiveLimits(unit: string, user = "", enabled = true) {
  return useQuery({
    queryKey: keys.live(unit, user),
    queryFn: () => api.get<LiveOut>(`${API}/limits/live`, { unit, user }),
    refetchInterval: LIMITS_LIVE_MS,
    refetchIntervalInBackground: false,
    enabled,
    placeholderData: (prev) => prev,
  });
}

export function useFairShare(enabled = true) {
  return useQuery({ queryKey: keys.fairShare, queryFn: () => api.get<FairShare>(`${API}/fair-share`), enabled });
}

export function useSaveFairShare() {
  return useChange((b: FairShare) => api.put<FairShare>(`${API}/fair-share`, b), () => [keys.fairShare, ["audit"]]);
}

export function useSaveProvider() {
  return useChange(
    (v: { provider: string; body: Record<string, unknown> }) => api.put<ProviderOut>(`${API}/providers/${enc(v.provider)}`, v.body),
    () => [keys.providers, ["limits", "live"], ["audit"]],
  );
}
