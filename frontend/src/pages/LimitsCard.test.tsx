import { screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { LiveOut, UnitLimitsOut } from "../api/types";
import { unit } from "../test/fixtures";
import { mockFetch, renderWith } from "../test/utils";
import { LimitsCard } from "./LimitsCard";

const stored: UnitLimitsOut = {
  unit_id: "cs101",
  limits: { requests_per_minute: 1000, tokens_per_minute: null, concurrent: null },
  member_limits: { requests_per_minute: 20, tokens_per_minute: null, concurrent: 2 },
};

const live: LiveOut = {
  at_ms: Date.UTC(2026, 10, 23, 12, 0, 0),
  nodes: [
    { node: "u:cs101", what: "unit", subject: "cs101", limits: { requests_per_minute: 1000 }, used: { requests: 250, tokens: 9000, concurrent: 3 } },
    { node: "p:openai", what: "provider", subject: "openai", limits: { requests_per_minute: 5000 }, used: { requests: 1, tokens: 0, concurrent: 0 } },
  ],
};

function routes(put?: (body: unknown) => unknown) {
  return mockFetch({
    "GET /api/v1/units/cs101/limits": () => stored,
    "GET /api/v1/limits/live": () => live,
    ...(put ? { "PUT /api/v1/units/cs101/limits": (c: { body: unknown }) => put(c.body) } : {}),
  });
}

describe("LimitsCard", () => {
  it("shows the stored limits and live use against them", async () => {
    routes();
    renderWith(<LimitsCard unit={unit("cs101")} canEdit />);
    const whole = await screen.findByRole("group", { name: "Whole unit" });
    await waitFor(() => expect(within(whole).getByLabelText("Requests / min")).toHaveValue("1000"));
    expect(within(whole).getByLabelText("Tokens / min")).toHaveValue("");
    const each = screen.getByRole("group", { name: "Each member" });
    expect(within(each).getByLabelText("Requests / min")).toHaveValue("20");
    expect(within(each).getByLabelText("Concurrent")).toHaveValue("2");
    const meter = await screen.findByRole("meter", { name: "Requests per minute of cs101" });
    expect(meter).toHaveAttribute("aria-valuenow", "250");
    expect(meter).toHaveAttribute("aria-valuemax", "1000");
    expect(screen.getByText(/all of it by/)).toBeInTheDocument();
    // The unit page shows the unit's path, not the catalog's provider limits.
    expect(screen.queryByText("openai")).not.toBeInTheDocument();
  });

  it("names a wrong value and sends nothing until it is fixed", async () => {
    const { calls } = routes(() => stored);
    const user = userEvent.setup();
    renderWith(<LimitsCard unit={unit("cs101")} canEdit />);
    const each = await screen.findByRole("group", { name: "Each member" });
    await waitFor(() => expect(within(each).getByLabelText("Concurrent")).toHaveValue("2"));
    await user.clear(within(each).getByLabelText("Concurrent"));
    await user.type(within(each).getByLabelText("Concurrent"), "0");
    expect(within(each).getByText(/a whole number of at least 1/)).toBeInTheDocument();
    expect(within(each).getByLabelText("Concurrent")).toHaveAttribute("aria-invalid", "true");
    expect(screen.getByRole("button", { name: /save limits/i })).toBeDisabled();
    await user.clear(within(each).getByLabelText("Tokens / min"));
    await user.type(within(each).getByLabelText("Tokens / min"), "1.5");
    expect(screen.getAllByText(/a whole number of at least 1/)).toHaveLength(2);
    expect(calls.some((c) => c.method === "PUT")).toBe(false);
  });

  it("sends both limits with empty fields left out and an emptied set as null", async () => {
    document.cookie = "eduaiq_csrf=csrf-9; path=/";
    const { calls } = routes((body) => ({ unit_id: "cs101", ...(body as object) }));
    const user = userEvent.setup();
    renderWith(<LimitsCard unit={unit("cs101")} canEdit />);
    const whole = await screen.findByRole("group", { name: "Whole unit" });
    await waitFor(() => expect(within(whole).getByLabelText("Requests / min")).toHaveValue("1000"));
    await user.clear(within(whole).getByLabelText("Requests / min"));
    const each = screen.getByRole("group", { name: "Each member" });
    await user.clear(within(each).getByLabelText("Requests / min"));
    await user.type(within(each).getByLabelText("Requests / min"), "30");
    await user.type(within(each).getByLabelText("Tokens / min"), "40,000");
    await user.click(screen.getByRole("button", { name: /save limits/i }));
    await waitFor(() => expect(calls.some((c) => c.method === "PUT")).toBe(true));
    const put = calls.find((c) => c.method === "PUT")!;
    expect(put.url).toBe("/api/v1/units/cs101/limits");
    expect(put.headers["X-CSRF-Token"]).toBe("csrf-9");
    expect(put.body).toEqual({ limits: null, member_limits: { requests_per_minute: 30, tokens_per_minute: 40000, concurrent: 2 } });
    expect(await screen.findByText(/Limits of CS101 saved/)).toBeInTheDocument();
  });

  it("shows the API's refusal inline, on the field it names", async () => {
    routes(() => ({
      status: 422,
      body: {
        error: {
          code: "invalid",
          message: "body.member_limits.concurrent: Input should be less than or equal to 1000000",
          details: { problems: [{ path: "body.member_limits.concurrent", message: "Input should be less than or equal to 1000000", type: "less_than_equal" }] },
        },
      },
    }));
    const user = userEvent.setup();
    renderWith(<LimitsCard unit={unit("cs101")} canEdit />);
    const each = await screen.findByRole("group", { name: "Each member" });
    await waitFor(() => expect(within(each).getByLabelText("Concurrent")).toHaveValue("2"));
    await user.clear(within(each).getByLabelText("Concurrent"));
    await user.type(within(each).getByLabelText("Concurrent"), "999999");
    await user.click(screen.getByRole("button", { name: /save limits/i }));
    const alert = await screen.findByRole("alert");
    expect(alert).toHaveTextContent("The limits were not saved");
    expect(alert).toHaveTextContent("(invalid)");
    expect(within(each).getByText("Input should be less than or equal to 1000000")).toBeInTheDocument();
    expect(within(each).getByLabelText("Concurrent")).toHaveAttribute("aria-invalid", "true");
  });

  it("is read-only for someone who may not set this unit's limits", async () => {
    routes();
    renderWith(<LimitsCard unit={unit("cs101")} canEdit={false} />);
    expect(await screen.findByRole("group", { name: "Whole unit" })).toBeDisabled();
    expect(screen.getByRole("button", { name: /save limits/i })).toBeDisabled();
  });
});
