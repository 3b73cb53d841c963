import { node } from "../test/fixtures";
import { defaultExpanded, flatten, indexTree, matching, pathTo } from "./tree";

const roots = [node("u", [node("sci", [node("cs", [node("cs101"), node("cs102")]), node("math")]), node("arts")])];

describe("flatten", () => {
  it("shows the roots and their children open at first", () => {
    const rows = flatten(roots, defaultExpanded(roots), null);
    expect(rows.map((r) => r.node.id)).toEqual(["u", "sci", "cs", "math", "arts"]);
    expect(rows.find((r) => r.node.id === "cs")).toMatchObject({ depth: 2, hasChildren: true, expanded: false });
    expect(rows.find((r) => r.node.id === "math")).toMatchObject({ pos: 2, size: 2 });
  });

  it("with a search shows each match under its ancestors, open", () => {
    const rows = flatten(roots, new Set(), matching(roots, "CS10"));
    expect(rows.map((r) => r.node.id)).toEqual(["u", "sci", "cs", "cs101", "cs102"]);
    expect(rows.every((r) => !r.hasChildren || r.expanded)).toBe(true);
  });

  it("matches names as well as ids and finds nothing for a stranger", () => {
    expect(matching(roots, "arts")).toEqual(new Set(["u", "arts"]));
    expect(flatten(roots, new Set(), matching(roots, "zzz"))).toEqual([]);
    expect(matching(roots, "  ")).toBeNull();
  });
});

describe("pathTo", () => {
  it("walks from the root to the unit", () => {
    expect(pathTo(indexTree(roots), "cs101")).toEqual(["u", "sci", "cs", "cs101"]);
  });
});
