import { screen, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { node } from "../test/fixtures";
import { renderWith } from "../test/utils";
import { UnitTree } from "./TreePage";

const roots = [
  node(
    "cs",
    [
      node("turing", [node("teach", [node("cs101", [], { kind: "course", name: "CS101 Intro" }, { cap: 100_000_000, used: 95_000_000 })], { kind: "teaching" })], { kind: "faculty" }),
      node("labs", [], { kind: "lab" }),
    ],
    { name: "Computer Science" },
    { cap: 800_000_000, used: 100_000_000 },
  ),
];
const warnings = [{ code: "over_allocated", unit: "cs", metric: "cost" as const, cap: 800, amount: 900, message: "cs's children are allocated 900 of cost, more than its cap of 800" }];

describe("UnitTree", () => {
  it("draws units with their kind, spend against cap and warnings", () => {
    renderWith(<UnitTree roots={roots} warnings={warnings} compiled at="2026-11-23T00:00:00Z" />);
    const tree = screen.getByRole("tree", { name: "Units" });
    const cs = within(tree).getByRole("treeitem", { name: /Computer Science, department, 1 warning/ });
    expect(cs).toHaveAttribute("aria-expanded", "true");
    expect(within(cs).getByText(/Over-allocated/)).toBeInTheDocument();
    expect(within(cs).getByRole("meter", { name: "Computer Science cost" })).toHaveAttribute("aria-valuenow", "100000000");
    expect(within(tree).queryByText("CS101 Intro")).toBeNull(); // the teaching pool is closed at first
  });

  it("finds a unit by name and opens its ancestors", async () => {
    const user = userEvent.setup();
    renderWith(<UnitTree roots={roots} warnings={[]} compiled at="2026-11-23T00:00:00Z" />);
    await user.type(screen.getByRole("searchbox", { name: "Search units" }), "intro");
    const row = await screen.findByRole("treeitem", { name: /CS101 Intro, course/ });
    expect(within(row).getByText("95%")).toBeInTheDocument();
    expect(screen.queryByRole("treeitem", { name: /LABS/ })).toBeNull();
  });

  it("moves with the arrow keys and opens a unit with the right arrow", async () => {
    const user = userEvent.setup();
    renderWith(<UnitTree roots={roots} warnings={[]} compiled at="2026-11-23T00:00:00Z" />);
    const first = screen.getByRole("treeitem", { name: /Computer Science/ });
    first.focus();
    await user.keyboard("{ArrowDown}{ArrowDown}");
    const teach = screen.getByRole("treeitem", { name: /TEACH/ });
    expect(teach).toHaveFocus();
    expect(teach).toHaveAttribute("aria-expanded", "false");
    await user.keyboard("{ArrowRight}");
    expect(teach).toHaveAttribute("aria-expanded", "true");
    expect(screen.getByRole("treeitem", { name: /CS101 Intro/ })).toBeInTheDocument();
  });
});
