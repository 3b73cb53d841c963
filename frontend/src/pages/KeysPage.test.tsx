import { screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { ExplainOut, KeyOut } from "../api/types";
import { me, mockFetch, renderWith } from "../test/utils";
import { KeysPage } from "./KeysPage";

const alice = me({
  user_id: "alice",
  name: "Alice",
  scopes: [],
  memberships: [{ unit_id: "cs101", unit_name: "CS101", kind: "course", role: "student", archived: false, effective_models: ["demo-chat"], default_model: null }],
});

const explain: ExplainOut = {
  institution: "demo-u",
  unit: "cs101",
  user: "alice",
  at: "2026-11-23T00:00:00Z",
  available: { cost: 4_250_000, tokens: null },
  nodes: [
    { node: "member(alice,cs101)", unit: "cs101", name: "alice", kind: "member", period: "month", period_key: "m", resets_at: null, metrics: { cost: { cap: 5_000_000, used: 750_000, reserved: 0, room: 4_250_000, extras: [] } } },
    { node: "cs101", unit: "cs101", name: "CS101", kind: "course", period: "month", period_key: "m", resets_at: null, metrics: { cost: { cap: 100_000_000, used: 900_000, reserved: 0, room: 99_100_000, extras: [] } } },
  ],
};

describe("KeysPage", () => {
  it("creates a key, shows it once with the GPT4All steps, and revokes it", async () => {
    let keys: KeyOut[] = [];
    const created = { id: "k1", prefix: "sk-eduaiq-abcd", user_id: "alice", unit_id: "cs101", name: "laptop", created_by: "alice", created_at: "2026-11-23T00:00:00Z", expires_at: null, revoked_at: null };
    const { calls } = mockFetch({
      "GET /api/v1/keys": () => keys,
      "GET /api/v1/explain": () => explain,
      "GET /api/v1/openapi.json": () => ({ paths: {} }),
      "POST /api/v1/keys": () => {
        keys = [created];
        return {
          ...created,
          key: "sk-eduaiq-abcd-SECRET",
          base_url: "http://gw.example/v1",
          gpt4all: { api_base_url: "http://gw.example/v1", api_key: "sk-eduaiq-abcd-SECRET", model_name: "demo-chat", models: ["demo-chat"], steps: ["Open GPT4All.", "API base URL: http://gw.example/v1"] },
        };
      },
      "DELETE /api/v1/keys/k1": () => {
        keys = [{ ...created, revoked_at: "2026-11-23T01:00:00Z" }];
        return keys[0];
      },
    });
    vi.spyOn(window, "confirm").mockReturnValue(true);
    const user = userEvent.setup();
    renderWith(<KeysPage />, { user: alice });

    const section = await screen.findByTestId("keys-cs101");
    expect(await within(section).findByText("$4.25")).toBeInTheDocument();
    await user.type(within(section).getByLabelText(/key name/i), "laptop");
    await user.click(within(section).getByRole("button", { name: /create key/i }));

    expect(await screen.findByTestId("new-key")).toHaveTextContent("sk-eduaiq-abcd-SECRET");
    expect(screen.getByText("API base URL: http://gw.example/v1")).toBeInTheDocument();
    expect(calls.find((c) => c.method === "POST")?.body).toEqual({ unit_id: "cs101", name: "laptop" });

    await user.click(await within(section).findByRole("button", { name: /revoke key sk-eduaiq-abcd \(laptop\)/i }));
    await waitFor(() => expect(within(section).getByText("revoked")).toBeInTheDocument());
    expect(calls.some((c) => c.method === "DELETE" && c.url === "/api/v1/keys/k1")).toBe(true);
  });

  it("tells a person without units that they cannot have keys", async () => {
    mockFetch({ "GET /api/v1/keys": () => [], "GET /api/v1/openapi.json": () => ({ paths: {} }) });
    renderWith(<KeysPage />, { user: me({ scopes: [], memberships: [] }) });
    expect(await screen.findByText(/not a member of any course/)).toBeInTheDocument();
  });
});
