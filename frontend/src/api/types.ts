/** Shapes of the admin API's answers (admin_api/routes/*), as the dashboard reads them. */

export type Metric = "cost" | "tokens";
export const METRICS: Metric[] = ["cost", "tokens"];
export type Period = "day" | "week" | "month" | "semester" | "year" | "none";
export const PERIODS: Period[] = ["day", "week", "month", "semester", "year", "none"];

export interface RuleIn {
  mode: "fixed" | "percent" | "inherit";
  amount: number | null;
  percent: string | number | null;
}

export interface MemberCapIn {
  mode: "fixed" | "fair_share" | "none";
  amount: number | null;
  factor: string | number | null;
}

export interface BudgetIn {
  period: Period | null;
  cost: RuleIn;
  tokens: RuleIn;
  member_cap: { cost: MemberCapIn; tokens: MemberCapIn };
}

export interface MetricView {
  cap: number | null;
  member_cap: number | null;
  used: number | null;
  reserved: number | null;
  room: number | null;
}

export interface ExtraView {
  id: string;
  metric: Metric;
  amount: number;
  used: number | null;
  valid_from: string;
  valid_to: string;
  chargeback: string | null;
  valid_now: boolean;
}

export interface UnitBudgetView {
  period: string;
  period_key: string;
  resets_at: string | null;
  metrics: Record<Metric, MetricView>;
  extras: ExtraView[];
}

export interface BudgetWarning {
  code: "over_allocated" | "cap_below_spend" | string;
  unit: string;
  metric: Metric;
  message: string;
  cap: number;
  amount: number;
}

export interface UnitOut {
  id: string;
  parent_id: string | null;
  kind: string;
  name: string | null;
  archived: boolean;
  position: number;
  models: string[] | null;
  default_model: string | null;
  effective_models: string[];
  budget: BudgetIn;
  numbers: UnitBudgetView;
  warnings: BudgetWarning[];
}

export interface TreeNode extends UnitOut {
  children: TreeNode[];
}

export interface TreeOut {
  at: string;
  compiled: boolean;
  roots: TreeNode[];
  warnings: BudgetWarning[];
}

export interface BudgetOut {
  unit_id: string;
  budget: BudgetIn;
  numbers: UnitBudgetView;
}

export interface CapChange {
  unit_id: string;
  name: string | null;
  caps_before: Record<string, number | null>;
  caps_after: Record<string, number | null>;
  member_caps_after: Record<string, number | null>;
  used: Record<string, number | null>;
}

export interface BudgetEffect {
  unit_id: string;
  at: string;
  saved: boolean;
  budget: BudgetIn;
  units: CapChange[];
  warnings: BudgetWarning[];
}

export interface MembershipOut {
  unit_id: string;
  unit_name: string | null;
  kind: string;
  role: string;
  archived: boolean;
  effective_models: string[];
  default_model: string | null;
}

export interface MeOut {
  user_id: string;
  email: string | null;
  name: string | null;
  institution_id: string;
  institution_name: string;
  currency: string;
  timezone: string;
  authenticated_by: string;
  token_scopes: string[] | null;
  institution_admin: boolean;
  api_base_url: string;
  memberships: MembershipOut[];
  scopes: { unit_id: string; unit_name: string | null; role: string }[];
}

export interface MemberOut {
  user_id: string;
  role: string;
  source: string;
  email: string | null;
  name: string | null;
}

export interface ImportOut {
  added: string[];
  changed: string[];
  unchanged: string[];
  removed: string[];
  users_created: string[];
}

export interface ScopeOut {
  unit_id: string;
  user_id: string;
  role: string;
  source: string;
  email: string | null;
  name: string | null;
}

export interface PolicyOut {
  unit_id: string;
  models: string[] | null;
  default_model: string | null;
  effective_models: string[];
  parent_models: string[];
}

export interface OfferOut {
  id: string;
  provider_id: string;
  upstream: string;
  vision: boolean;
  max_output_tokens: number;
  input_per_mtok: number;
  output_per_mtok: number;
  cached_input_per_mtok: number | null;
  price_source: string;
  priority?: number | null;
  fallbacks?: string[];
  image_tokens?: string | null;
  slots?: number | null;
  queue?: QueueConfig | null;
  limits?: Limits | null;
  contract?: Contract | null;
}

export interface ProviderOut {
  id: string;
  type: string;
  base_url: string;
  api_key_env: string | null;
  options: Record<string, unknown>;
  models: OfferOut[];
}

export interface KeyOut {
  id: string;
  prefix: string;
  user_id: string;
  unit_id: string;
  name: string | null;
  created_by: string | null;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

export interface ClientSetup {
  api_base_url: string;
  api_key: string;
  model_name: string | null;
  models: string[];
  steps: string[];
}

export interface KeyCreated extends KeyOut {
  key: string;
  base_url: string;
  gpt4all: ClientSetup;
}

export interface ExplainMetric {
  cap: number | null;
  used: number;
  reserved: number;
  room: number | null;
  extras: {
    id: string;
    amount: number;
    used: number;
    reserved: number;
    valid_from: string;
    valid_to: string;
    chargeback: string | null;
    valid_now: boolean;
  }[];
}

export interface ExplainNode {
  node: string;
  unit: string;
  name: string;
  kind: string;
  period: string;
  period_key: string;
  resets_at: string | null;
  metrics: Record<string, ExplainMetric>;
}

export interface ExplainOut {
  institution: string;
  unit: string;
  user: string;
  at: string;
  available: Record<string, number | null>;
  nodes: ExplainNode[];
}

export interface AuditOut {
  id: number;
  at: string;
  actor: string;
  action: string;
  target: string;
  unit_id: string | null;
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
}

export interface AuditPage {
  entries: AuditOut[];
  next_before_id: number | null;
}

export interface SessionOut {
  principal: {
    institution_id: string;
    user_id: string;
    email: string | null;
    name: string | null;
    method: string;
  };
  csrf_token: string;
}

export type Dimension = "unit" | "model" | "provider" | "user" | "purpose" | "status";

export interface UsageRowOut {
  keys: Record<string, string | null>;
  bucket: string | null;
  requests: number;
  input_tokens: number;
  output_tokens: number;
  image_tokens: number;
  cached_tokens: number;
  cost_micro: number;
  overage_micro: number;
}

export interface UsageReportOut {
  unit_id: string;
  start: string;
  end: string;
  group_by: string[];
  bucket: string | null;
  rows: UsageRowOut[];
}

export interface UserUsageOut {
  user_id: string | null;
  requests: number;
  tokens: number;
  cost_micro: number;
}

export interface ForecastOut {
  unit_id: string;
  period_start: string;
  period_end: string;
  spent: number;
  projected: number;
  low: number;
  high: number;
  daily_rate: number;
  cap: number | null;
  exhaustion: string | null;
  seasonal: boolean;
}

export interface ExportLine {
  unit_id: string;
  unit_name: string;
  purpose: string;
  model_id: string | null;
  provider_id: string | null;
  funding: "allocation" | "extra" | "overage";
  extra_id: string | null;
  cost_object: string;
  requests: number;
  input_tokens: number;
  output_tokens: number;
  cost: string;
}

export interface ExportJson {
  institution_id: string;
  period: string;
  currency: string;
  scope_unit: string | null;
  lines: ExportLine[];
  totals: { requests: number; input_tokens: number; output_tokens: number; cost: string };
}

/** Rate limits of one node: per minute over a sliding 60 x 1 s window, and requests in progress. */
export interface Limits {
  requests_per_minute?: number | null;
  tokens_per_minute?: number | null;
  concurrent?: number | null;
}

export const LIMIT_FIELDS = ["requests_per_minute", "tokens_per_minute", "concurrent"] as const;
export type LimitField = (typeof LIMIT_FIELDS)[number];

/** A committed-spend ceiling in currency units (not micro-units), per calendar month or year. */
export interface Contract {
  cost: number | string;
  period: "month" | "year";
}

export interface QueueConfig {
  max_wait_seconds: number;
  max_waiting: number;
  retry_after_seconds: number;
}

export interface UnitLimits {
  limits: Limits | null;
  member_limits: Limits | null;
}

export interface UnitLimitsOut extends UnitLimits {
  unit_id: string;
}

export interface LiveNode {
  node: string;
  what: "unit" | "member" | "provider" | "model";
  subject: string;
  limits: Limits;
  used: { requests: number; tokens: number; concurrent: number };
}

export interface LiveOut {
  at_ms: number;
  nodes: LiveNode[];
}

export interface FairShareWindow {
  name: string;
  from: string;
  to: string;
  weights: Record<string, number | string>;
}

export interface FairShare {
  weights: Record<string, number | string>;
  default_weight: number | string;
  windows: FairShareWindow[];
}

/** A person's provenance: file | sso | api | scim | roster; null for people created before it was recorded. */
export type PersonSource = "file" | "sso" | "api" | "scim" | "roster" | null;

export interface PersonMembershipOut {
  unit_id: string;
  unit_name: string | null;
  role: string;
  source: string;
  ends_at: string | null;
  ended: boolean;
  last_used_at: string | null;
}

export interface PersonOut {
  user_id: string;
  name: string | null;
  email: string | null;
  source: PersonSource;
  external_id: string | null;
  created_at: string;
  deprovisioned_at: string | null;
  erased: boolean;
  memberships: PersonMembershipOut[];
  last_used_at: string | null;
}

export interface PeopleOut {
  unit_id: string;
  people: PersonOut[];
  next_after: string | null;
}

export interface LeaverOut {
  key_id: string;
  key_prefix: string;
  user_id: string;
  name: string | null;
  unit_id: string;
  unit_name: string | null;
  ends_at: string | null;
  deprovisioned_at: string | null;
  stopped_at: string;
  key_revoked_at: string | null;
  first_event_at: string;
  last_event_at: string;
  events: number;
  cost_micro: number;
}

export interface LeaversOut {
  unit_id: string;
  grace_seconds: number;
  tolerance_seconds: number;
  leavers: LeaverOut[];
  truncated: boolean;
}
