import { screen } from "@testing-library/react";
import { Route, Routes, useLocation } from "react-router";
import { App } from "./App";
import { me, mockFetch, renderWith } from "./test/utils";

function Where() {
  return <output data-testid="where">{useLocation().pathname}</output>;
}

describe("App", () => {
  it("asks for sign-in when there is no session", async () => {
    mockFetch({ "GET /api/v1/me": () => ({ status: 401, body: { error: { code: "unauthenticated", message: "sign in first" } } }) });
    renderWith(<App />, { user: null });
    expect(await screen.findByRole("heading", { name: "Sign in" })).toBeInTheDocument();
    expect(screen.getByRole("button", { name: /single sign-on/i })).toBeInTheDocument();
  });

  it("takes a student to their keys", async () => {
    const alice = me({ user_id: "alice", scopes: [], memberships: [{ unit_id: "cs101", unit_name: "CS101", kind: "course", role: "student", archived: false, effective_models: [], default_model: null }] });
    mockFetch({ "GET /api/v1/me": () => alice, "GET /api/v1/keys": () => [], "GET /api/v1/explain": () => ({ available: {}, nodes: [] }), "GET /api/v1/openapi.json": () => ({ paths: {} }) });
    renderWith(
      <>
        <App />
        <Routes>
          <Route path="*" element={<Where />} />
        </Routes>
      </>,
      { user: null },
    );
    expect(await screen.findByRole("heading", { name: "My API keys" })).toBeInTheDocument();
    expect(screen.getByTestId("where")).toHaveTextContent("/keys");
    expect(screen.queryByRole("link", { name: /audit log/i })).toBeNull();
  });

  it("says so when the admin API cannot be reached", async () => {
    mockFetch({ "GET /api/v1/me": () => ({ status: 503, body: { error: { code: "unavailable", message: "a backing service is unreachable" } } }) });
    renderWith(<App />, { user: null });
    expect(await screen.findByRole("alert")).toHaveTextContent("a backing service is unreachable");
  });
});
