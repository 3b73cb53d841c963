import { screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import type { BudgetEffect, BudgetIn } from "../api/types";
import { unit } from "../test/fixtures";
import { mockFetch, renderWith } from "../test/utils";
import { BudgetEditor, bodyOf, formOf } from "./BudgetEditor";

const cs101Budget: BudgetIn = {
  period: null,
  cost: { mode: "fixed", amount: 100_000_000, percent: null },
  tokens: { mode: "inherit", amount: null, percent: null },
  member_cap: { cost: { mode: "fixed", amount: 5_000_000, factor: null }, tokens: { mode: "none", amount: null, factor: null } },
};

function effect(body: BudgetIn, saved: boolean): BudgetEffect {
  const cap = body.cost.mode === "percent" ? Math.floor(320_000_000 * (Number(body.cost.percent) / 100)) : body.cost.amount;
  return {
    unit_id: "cs101",
    at: "2026-11-23T00:00:00Z",
    saved,
    budget: body,
    units: [
      {
        unit_id: "cs101",
        name: "CS101",
        caps_before: { cost: 100_000_000, tokens: null },
        caps_after: { cost: cap, tokens: null },
        member_caps_after: { cost: 5_000_000, tokens: null },
        used: { cost: 7_000_000, tokens: 10 },
      },
    ],
    warnings:
      cap !== null && cap < 7_000_000
        ? [{ code: "cap_below_spend", unit: "cs101", metric: "cost", cap, amount: 7_000_000, message: `cs101's cost cap ${cap} is below what it already spent this period (7000000)` }]
        : [],
  };
}

describe("bodyOf", () => {
  it("round-trips the stored budget", () => {
    expect(bodyOf(formOf(cs101Budget)).body).toEqual(cs101Budget);
  });

  it("sends money as integer micro-units and percents as decimals", () => {
    const f = formOf(cs101Budget);
    f.cost = { ...f.cost, mode: "percent", percent: "2.5" };
    f.tokens = { ...f.tokens, mode: "fixed", amount: "1,000,000", capMode: "fair_share", factor: "1.5" };
    f.period = "week";
    expect(bodyOf(f).body).toEqual({
      period: "week",
      cost: { mode: "percent", amount: null, percent: "2.5" },
      tokens: { mode: "fixed", amount: 1_000_000, percent: null },
      member_cap: { cost: { mode: "fixed", amount: 5_000_000, factor: null }, tokens: { mode: "fair_share", amount: null, factor: "1.5" } },
    });
  });

  it("names every field it cannot send", () => {
    const f = formOf(cs101Budget);
    f.cost = { ...f.cost, mode: "percent", percent: "140" };
    f.tokens = { ...f.tokens, capMode: "fixed", capAmount: "1.5" };
    const { body, problems } = bodyOf(f);
    expect(body).toBeNull();
    expect(Object.keys(problems).sort()).toEqual(["cost.percent", "tokens.capAmount"]);
  });
});

describe("BudgetEditor", () => {
  it("previews the caps and warnings of a change before saving, then saves it", async () => {
    document.cookie = "eduaiq_csrf=csrf-1; path=/";
    const { calls } = mockFetch({
      "POST /api/v1/units/cs101/budget/preview": (c) => effect(c.body as BudgetIn, false),
      "PUT /api/v1/units/cs101/budget": (c) => effect(c.body as BudgetIn, true),
    });
    const user = userEvent.setup();
    renderWith(<BudgetEditor unit={unit("cs101", { budget: cs101Budget, parent_id: "turing-teaching" })} canEdit />);

    const cost = screen.getByRole("group", { name: "Cost (USD)" });
    await user.selectOptions(within(cost).getByLabelText("Mode"), "percent");
    await user.type(within(cost).getByLabelText("Percent"), "1");

    const preview = await screen.findByTestId("budget-preview");
    expect(within(preview).getByText("$3.20")).toBeInTheDocument();
    expect(within(preview).getByText(/Cap below current spend/)).toBeInTheDocument();
    const previews = calls.filter((c) => c.url.endsWith("/preview"));
    expect(previews.at(-1)?.body).toMatchObject({ cost: { mode: "percent", percent: "1", amount: null } });
    expect(calls.some((c) => c.method === "PUT")).toBe(false);

    await user.click(screen.getByRole("button", { name: /save budget/i }));
    await waitFor(() => expect(calls.some((c) => c.method === "PUT")).toBe(true));
    const put = calls.find((c) => c.method === "PUT")!;
    expect(put.headers["X-CSRF-Token"]).toBe("csrf-1");
    expect(put.body).toMatchObject({ cost: { mode: "percent", percent: "1" }, member_cap: { cost: { mode: "fixed", amount: 5_000_000 } } });
    expect(await screen.findByText(/Budget of CS101 saved/)).toBeInTheDocument();
  });

  it("shows why the server would refuse an edit", async () => {
    mockFetch({
      "POST /api/v1/units/cs101/budget/preview": () => ({
        status: 422,
        body: { error: { code: "budget_invalid", message: "a percent needs a finite cap above it", details: [] } },
      }),
    });
    const user = userEvent.setup();
    renderWith(<BudgetEditor unit={unit("cs101", { budget: cs101Budget })} canEdit />);
    const cost = screen.getByRole("group", { name: "Cost (USD)" });
    await user.selectOptions(within(cost).getByLabelText("Mode"), "percent");
    await user.type(within(cost).getByLabelText("Percent"), "50");
    expect(await screen.findByRole("alert")).toHaveTextContent("a percent needs a finite cap above it");
  });

  it("is read-only for someone who may not set this unit's budget", () => {
    mockFetch({});
    renderWith(<BudgetEditor unit={unit("cs", { budget: cs101Budget })} canEdit={false} />);
    expect(screen.getByRole("group", { name: "Cost (USD)" })).toBeDisabled();
    expect(screen.getByRole("button", { name: /save budget/i })).toBeDisabled();
  });
});
