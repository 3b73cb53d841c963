import { LogIn } from "lucide-react";
import { useState } from "react";

const METHODS = [
  { id: "saml", label: "SAML (Shibboleth, ADFS, …)" },
  { id: "oidc", label: "OpenID Connect" },
  { id: "cas", label: "CAS" },
] as const;

/**
 * Sign-in: the institution's single sign-on (SAML, OIDC or CAS, whichever it set up) starts at
 * /auth/<method>/<institution>/login; the development login exists only in `eduaiq dev`.
 */
export function LoginPage() {
  const here = window.location.pathname + window.location.search;
  const returnTo = here.startsWith("/") && !here.startsWith("//") ? here : "/";
  const [institution, setInstitution] = useState(() => localStorage.getItem("eduaiq.institution") ?? "");
  const [method, setMethod] = useState<string>(() => localStorage.getItem("eduaiq.method") ?? "saml");

  const ssoHref = `/auth/${method}/${encodeURIComponent(institution.trim())}/login?return_to=${encodeURIComponent(returnTo)}`;

  return (
    <main className="login-page">
      <div className="login-card">
        <div className="brand brand-large">
          <span className="brand-mark" aria-hidden="true">
            E
          </span>
          <span className="brand-name">EduAiQ</span>
        </div>
        <h1>Sign in</h1>
        <p className="muted">Budgets, models, keys and usage of your institution&apos;s AI gateway.</p>

        <form
          className="stack"
          onSubmit={(e) => {
            e.preventDefault();
            localStorage.setItem("eduaiq.institution", institution.trim());
            localStorage.setItem("eduaiq.method", method);
            window.location.assign(ssoHref);
          }}
        >
          <label className="field">
            <span>Institution</span>
            <input value={institution} onChange={(e) => setInstitution(e.target.value)} required placeholder="e.g. stateu" autoComplete="organization" />
          </label>
          <fieldset className="field">
            <legend>Sign-in method</legend>
            <div className="segmented">
              {METHODS.map((m) => (
                <label key={m.id} className={`seg ${method === m.id ? "seg-on" : ""}`}>
                  <input type="radio" name="method" value={m.id} checked={method === m.id} onChange={() => setMethod(m.id)} />
                  {m.label}
                </label>
              ))}
            </div>
          </fieldset>
          <button className="btn btn-primary" type="submit">
            <LogIn size={16} aria-hidden="true" /> Continue with single sign-on
          </button>
        </form>

        <details className="dev-login">
          <summary>Development sign-in</summary>
          <p className="muted small">Only when the server runs as <code>eduaiq dev</code>: sign in as any imported user.</p>
          <form method="get" action="/auth/dev/login" className="stack">
            <label className="field">
              <span>User id</span>
              <input name="user" required placeholder="e.g. cs-admin" autoComplete="username" />
            </label>
            <label className="field">
              <span>Institution (optional when there is one)</span>
              <input name="institution" placeholder="e.g. demo-u" />
            </label>
            <input type="hidden" name="return_to" value={returnTo} />
            <button className="btn" type="submit">
              Sign in (dev)
            </button>
          </form>
        </details>
      </div>
    </main>
  );
}
