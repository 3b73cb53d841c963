/**
 * Which admin API routes this server has, read from its own OpenAPI document.
 *
 * Sections backed by routes that a deployment may not have yet (usage reports, forecasts,
 * exports) are shown only when the route is there, instead of failing with a 404.
 */

import { useQuery } from "@tanstack/react-query";
import { api, API } from "./client";

export interface Capabilities {
  has: (method: string, pattern: RegExp) => string | null;
  paths: string[];
}

interface OpenApiDoc {
  paths?: Record<string, Record<string, unknown>>;
}

export function capabilitiesOf(doc: OpenApiDoc): Capabilities {
  const routes: string[] = [];
  for (const [path, ops] of Object.entries(doc.paths ?? {})) {
    for (const method of Object.keys(ops)) routes.push(`${method.toUpperCase()} ${path}`);
  }
  return {
    paths: routes,
    has(method, pattern) {
      for (const r of routes) {
        const [m, p] = r.split(" ");
        if (m === method.toUpperCase() && pattern.test(p)) return p;
      }
      return null;
    },
  };
}

export function useCapabilities() {
  return useQuery({
    queryKey: ["openapi"],
    queryFn: async () => capabilitiesOf(await api.get<OpenApiDoc>(`${API}/openapi.json`)),
    staleTime: 5 * 60_000,
    retry: 1,
  });
}
