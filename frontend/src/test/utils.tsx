import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render } from "@testing-library/react";
import type { ReactNode } from "react";
import { MemoryRouter } from "react-router";
import { vi } from "vitest";
import type { MeOut } from "../api/types";
import { ToastProvider } from "../components/Toasts";
import { SessionContext, sessionOf } from "../session";

export interface Call {
  method: string;
  url: string;
  body: unknown;
  headers: Record<string, string>;
}

type Handler = (call: Call) => { status?: number; body?: unknown } | unknown;

/**
 * A fake server for fetch: routes are "METHOD /path" (query ignored) to a handler returning a JSON
 * body, or {status, body}. Every call is recorded; an unrouted call answers 404 like the server.
 */
export function mockFetch(routes: Record<string, Handler>) {
  const calls: Call[] = [];
  const fn = vi.fn(async (input: RequestInfo | URL, init?: RequestInit) => {
    const url = String(input);
    const method = (init?.method ?? "GET").toUpperCase();
    const path = url.split("?")[0];
    const headers = Object.fromEntries(Object.entries((init?.headers as Record<string, string>) ?? {}));
    const raw = init?.body;
    let body: unknown = raw;
    if (typeof raw === "string" && headers["Content-Type"] === "application/json") body = JSON.parse(raw);
    const call = { method, url, body, headers };
    calls.push(call);
    const handler = routes[`${method} ${path}`];
    if (!handler) return json(404, { error: { code: "not_found", message: `no route ${method} ${path}` } });
    const out = handler(call) as { status?: number; body?: unknown } | undefined;
    if (out && typeof out === "object" && "status" in out && typeof out.status === "number") return json(out.status, out.body);
    return json(200, out);
  });
  vi.stubGlobal("fetch", fn);
  return { calls, fn };
}

function json(status: number, body: unknown): Response {
  return new Response(status === 204 ? null : JSON.stringify(body ?? null), {
    status,
    headers: { "content-type": "application/json" },
  });
}

export function me(over: Partial<MeOut> = {}): MeOut {
  return {
    user_id: "cs-admin",
    email: "cs-admin@demo.edu",
    name: "CS Admin",
    institution_id: "demo-u",
    institution_name: "Demo University",
    currency: "USD",
    timezone: "UTC",
    authenticated_by: "dev",
    token_scopes: null,
    institution_admin: false,
    api_base_url: "http://gw.example/v1",
    memberships: [],
    scopes: [{ unit_id: "cs", unit_name: "Computer Science", role: "admin" }],
    ...over,
  };
}

export function renderWith(ui: ReactNode, { user = me(), route = "/" }: { user?: MeOut | null; route?: string } = {}) {
  const client = new QueryClient({ defaultOptions: { queries: { retry: false, refetchInterval: false, staleTime: Infinity } } });
  const tree = (
    <QueryClientProvider client={client}>
      <MemoryRouter initialEntries={[route]}>
        <ToastProvider>{user ? <SessionContext.Provider value={sessionOf(user)}>{ui}</SessionContext.Provider> : ui}</ToastProvider>
      </MemoryRouter>
    </QueryClientProvider>
  );
  return { client, ...render(tree) };
}
