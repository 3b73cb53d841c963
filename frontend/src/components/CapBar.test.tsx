import { render, screen } from "@testing-library/react";
import { CapBar } from "./CapBar";

describe("CapBar", () => {
  it("is a meter with the spend, the holds and the cap in words", () => {
    render(<CapBar metric="cost" used={25_000_000} reserved={5_000_000} cap={100_000_000} currency="USD" label="CS101 cost" />);
    const meter = screen.getByRole("meter", { name: "CS101 cost" });
    expect(meter).toHaveAttribute("aria-valuenow", "25000000");
    expect(meter).toHaveAttribute("aria-valuemax", "100000000");
    expect(meter).toHaveAttribute("aria-valuetext", "$25 used, $5 reserved of $100");
    expect(screen.getByText("30%")).toBeInTheDocument();
  });

  it("turns red when spend and holds reach the cap", () => {
    const { container } = render(<CapBar metric="cost" used={90_000_000} reserved={20_000_000} cap={100_000_000} currency="USD" label="c" />);
    expect(container.firstChild).toHaveClass("tone-over");
  });

  it("says when a unit has no cap of its own", () => {
    render(<CapBar metric="tokens" used={1200} reserved={0} cap={null} currency="USD" label="t" />);
    expect(screen.getByRole("meter")).toHaveAttribute("aria-valuetext", "1,200 tok used, no cap of its own");
  });
});
