import type { OfferOut, ProviderOut } from "../api/types";
import { contractBody, modelBody, providerBody } from "./catalog";

const offer: OfferOut = {
  id: "llama",
  provider_id: "campus",
  upstream: "llama",
  vision: false,
  max_output_tokens: 4096,
  input_per_mtok: 50_000,
  output_per_mtok: 100_000,
  cached_input_per_mtok: null,
  price_source: "contract",
  slots: 16,
  queue: { max_wait_seconds: 30, max_waiting: 1000, retry_after_seconds: 5 },
  limits: { tokens_per_minute: 800_000 },
  contract: { cost: 4000, period: "month" },
};

describe("catalog bodies", () => {
  it("a price edit sends the model's limits, contract, slots and queue back unchanged", () => {
    const body = modelBody(offer, { price: { input_per_mtok: 1, output_per_mtok: 2, cached_input_per_mtok: null } });
    expect(body).toMatchObject({ slots: 16, limits: { tokens_per_minute: 800_000 }, contract: { cost: 4000, period: "month" }, price: { input_per_mtok: 1 } });
  });

  it("a price edit keeps the model's priority, fallbacks and image rule", () => {
    const body = modelBody({ ...offer, priority: 5, fallbacks: ["gpt-4o-mini"], image_tokens: "qwen2-vl" }, { limits: null });
    expect(body).toMatchObject({ priority: 5, fallbacks: ["gpt-4o-mini"], image_tokens: "qwen2-vl" });
  });

  it("a limits edit keeps a list price a list price", () => {
    expect(modelBody({ ...offer, price_source: "default" }, { limits: null }).price).toBeNull();
  });

  it("refuses to send a provider back when it would lose a setting", () => {
    const p: ProviderOut = { id: "x", type: "openai", base_url: "", api_key_env: "K", options: { stream_usage: "counted" }, models: [] };
    expect(providerBody(p, null, null).blocked).toMatch(/stream_usage/);
    const ok = providerBody({ ...p, options: { priority: 3, headers: { "X-Org": "env:ORG" } } }, { concurrent: 5 }, null);
    expect(ok.body).toEqual({ type: "openai", base_url: null, api_key_env: "K", priority: 3, headers: { "X-Org": "env:ORG" }, limits: { concurrent: 5 }, contract: null });
    expect(providerBody({ ...p, options: { headers: { Authorization: "[redacted]" } } }, null, null).body).toBeNull();
  });

  it("a contract is a positive amount with at most six decimals", () => {
    expect(contractBody({ cost: "1,250.50", period: "year" }).body).toEqual({ cost: "1250.50", period: "year" });
    expect(contractBody({ cost: "0", period: "month" }).problem).toMatch(/above 0/);
    expect(contractBody({ cost: "", period: "month" })).toEqual({ body: null, problem: null });
  });
});
