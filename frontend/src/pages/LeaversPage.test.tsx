import { screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { LeaverOut, LeaversOut, PeopleOut } from "../api/types";
import { unit } from "../test/fixtures";
import { me, mockFetch, renderWith } from "../test/utils";
import { LeaversPage } from "./LeaversPage";
import { PeoplePanel, sourceLabel } from "./PeoplePanel";

const auditor = me({ user_id: "aud", scopes: [{ unit_id: "cs", unit_name: "Computer Science", role: "auditor" }] });

function report(leavers: LeaverOut[]): LeaversOut {
  return { unit_id: "cs", grace_seconds: 3600, tolerance_seconds: 2, leavers, truncated: false };
}

const late: LeaverOut = {
  key_id: "k9",
  key_prefix: "sk-eduaiq-9abc",
  user_id: "bob",
  name: "Bob Student",
  unit_id: "cs101",
  unit_name: "CS101",
  ends_at: "2026-09-01T05:00:00Z",
  deprovisioned_at: null,
  stopped_at: "2026-09-01T06:00:00Z",
  key_revoked_at: null,
  first_event_at: "2026-09-01T06:10:00Z",
  last_event_at: "2026-09-01T06:45:00Z",
  events: 3,
  cost_micro: 7_500_000,
};

describe("LeaversPage", () => {
  it("says so when no key worked after its membership ended", async () => {
    const { calls } = mockFetch({ "GET /api/v1/units/cs/leavers": () => report([]) });
    renderWith(<LeaversPage />, { user: auditor });
    expect(await screen.findByText("No key worked after its membership ended.")).toBeInTheDocument();
    expect(screen.getByText(/1 hour after its membership ends/)).toBeInTheDocument();
    expect(calls.map((c) => c.url)).toEqual(["/api/v1/units/cs/leavers"]);
  });

  it("lists a key used after its membership ended, with its person, times, count and cost", async () => {
    mockFetch({ "GET /api/v1/units/cs/leavers": () => ({ ...report([late]), grace_seconds: 0 }) });
    renderWith(<LeaversPage />, { user: auditor });
    const row = await screen.findByTestId("leaver-k9");
    expect(screen.getByText(/A key stops working when its membership ends/)).toBeInTheDocument();
    expect(within(row).getByText("sk-eduaiq-9abc…")).toBeInTheDocument();
    expect(within(row).getByText("Bob Student")).toBeInTheDocument();
    expect(within(row).getByText(/membership ended/)).toBeInTheDocument();
    expect(within(row).getByText("3")).toBeInTheDocument();
    expect(within(row).getByText("$7.50")).toBeInTheDocument();
    expect(screen.queryByText("No key worked after its membership ended.")).toBeNull();
  });

  it("checks another of the caller's units when picked", async () => {
    const both = me({ scopes: [{ unit_id: "cs", unit_name: "Computer Science", role: "admin" }, { unit_id: "math", unit_name: "Mathematics", role: "finance" }] });
    const { calls } = mockFetch({ "GET /api/v1/units/cs/leavers": () => report([]), "GET /api/v1/units/math/leavers": () => ({ ...report([late]), unit_id: "math" }) });
    const user = userEvent.setup();
    renderWith(<LeaversPage />, { user: both });
    await screen.findByText("No key worked after its membership ended.");
    await user.selectOptions(screen.getByLabelText("Unit (and below)"), "math");
    expect(await screen.findByTestId("leaver-k9")).toBeInTheDocument();
    expect(calls.map((c) => c.url)).toContain("/api/v1/units/math/leavers");
  });
});

describe("PeoplePanel provenance", () => {
  const people: PeopleOut = {
    unit_id: "cs101",
    next_after: null,
    people: [
      {
        user_id: "alice", name: "Alice", email: "alice@demo.edu", source: "file", external_id: null, created_at: "2026-08-01T00:00:00Z",
        deprovisioned_at: null, erased: false, last_used_at: "2026-11-20T09:30:00Z",
        memberships: [{ unit_id: "cs101", unit_name: "CS101", role: "student", source: "file", ends_at: null, ended: false, last_used_at: "2026-11-20T09:30:00Z" }],
      },
      {
        user_id: "old", name: null, email: null, source: null, external_id: "ext-42", created_at: "2025-01-01T00:00:00Z",
        deprovisioned_at: "2026-10-01T00:00:00Z", erased: false, last_used_at: null,
        memberships: [{ unit_id: "cs101", unit_name: "CS101", role: "student", source: "api", ends_at: "2026-09-01T05:00:00Z", ended: true, last_used_at: null }],
      },
    ],
  };

  it("shows each person's source badge, memberships with their end, and last use", async () => {
    mockFetch({ "GET /api/v1/units/cs101/members": () => [], "GET /api/v1/units/cs101/people": () => people, "GET /api/v1/units/cs101/admins": () => [], "GET /api/v1/units/cs101/keys": () => [] });
    renderWith(<PeoplePanel unit={unit("cs101", { name: "CS101" })} path={["cs", "cs101"]} />, { user: auditor });
    const alice = await screen.findByTestId("person-alice");
    expect(within(alice).getByTestId("person-source")).toHaveTextContent("file");
    expect(within(alice).queryByText("never")).toBeNull();
    const old = screen.getByTestId("person-old");
    expect(within(old).getByTestId("person-source")).toHaveTextContent("unknown (before provenance was recorded)");
    expect(within(old).getByText(/^ended /)).toBeInTheDocument();
    expect(within(old).getByText(/^left /)).toBeInTheDocument();
    expect(within(old).getByText("id there: ext-42")).toBeInTheDocument();
    expect(within(old).getByText("never")).toBeInTheDocument();
  });

  it("names every source the way the dashboard shows it", () => {
    expect(["file", "sso", "scim", "roster", "api", null].map((s) => sourceLabel(s as never))).toEqual(["file", "SSO", "SCIM", "roster", "API", "unknown (before provenance was recorded)"]);
  });
});
