import { amount, microToInput, money, parseMoney, percent } from "./format";

describe("money", () => {
  it("turns micro-units into the currency", () => {
    expect(money(1_500_000, "USD")).toBe("$1.50");
    expect(money(100_000_000, "USD")).toBe("$100");
    expect(money(null, "USD")).toBe("—");
  });
  it("keeps sub-cent spend visible", () => {
    expect(money(1_234, "USD")).toBe("$0.0012");
    expect(money(3, "USD")).toBe("$0.000003");
  });
});

describe("parseMoney and microToInput", () => {
  it.each([
    ["100", 100_000_000],
    ["12.5", 12_500_000],
    ["0.000001", 1],
    ["1,000", 1_000_000_000],
  ])("parses %s exactly", (text, micro) => {
    expect(parseMoney(text)).toBe(micro);
    expect(parseMoney(microToInput(micro))).toBe(micro);
  });
  it.each(["", "abc", "1.2345678", "-3", "1e3"])("refuses %j", (text) => {
    expect(parseMoney(text)).toBeNull();
  });
});

describe("amount and percent", () => {
  it("formats tokens and money by metric", () => {
    expect(amount("tokens", 2_000_000, "USD")).toBe("2M tok");
    expect(amount("cost", 5_000_000, "USD")).toBe("$5");
  });
  it("shows small shares with a decimal", () => {
    expect(percent(5, 100)).toBe("5.0%");
    expect(percent(50, 100)).toBe("50%");
    expect(percent(1, 0)).toBe("—");
  });
});
