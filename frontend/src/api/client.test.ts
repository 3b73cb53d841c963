import { mockFetch } from "../test/utils";
import { api, ApiError, request } from "./client";

describe("request", () => {
  it("sends the CSRF token from the cookie on changes, not on reads", async () => {
    document.cookie = "eduaiq_csrf=tok-123; path=/";
    const { calls } = mockFetch({ "GET /api/v1/me": () => ({}), "PUT /api/v1/x": () => ({ ok: true }) });
    await api.get("/api/v1/me");
    await api.put("/api/v1/x", { a: 1 });
    expect(calls[0].headers["X-CSRF-Token"]).toBeUndefined();
    expect(calls[1].headers["X-CSRF-Token"]).toBe("tok-123");
    expect(calls[1].body).toEqual({ a: 1 });
  });

  it("raises the server's error code and message", async () => {
    mockFetch({ "POST /api/v1/keys": () => ({ status: 403, body: { error: { code: "forbidden", message: "not yours", details: { unit: "cs" } } } }) });
    const err = await request("/api/v1/keys", { method: "POST", body: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 403, code: "forbidden", message: "not yours", details: { unit: "cs" } });
  });

  it("puts query parameters on the URL and drops empty ones", async () => {
    const { calls } = mockFetch({ "GET /api/v1/audit": () => ({ entries: [] }) });
    await api.get("/api/v1/audit", { unit: "cs", actor: "", limit: 50 });
    expect(calls[0].url).toBe("/api/v1/audit?unit=cs&limit=50");
  });
});
