/** The signed-in caller (from /api/v1/me) and what their roles let the dashboard show. */

import { createContext, useContext } from "react";
import type { MeOut } from "./api/types";

export interface Session {
  me: MeOut;
  isAdmin: boolean; // admin of some unit
  isFinance: boolean;
  isAuditor: boolean;
  isInstitutionAdmin: boolean;
  hasScope: boolean; // admin, finance or auditor anywhere
  teaches: boolean; // instructor somewhere
  hasMemberships: boolean;
}

export function sessionOf(me: MeOut): Session {
  const roles = new Set(me.scopes.map((s) => s.role));
  return {
    me,
    isAdmin: roles.has("admin"),
    isFinance: roles.has("finance"),
    isAuditor: roles.has("auditor"),
    isInstitutionAdmin: me.institution_admin,
    hasScope: me.scopes.length > 0,
    teaches: me.memberships.some((m) => m.role === "instructor"),
    hasMemberships: me.memberships.length > 0,
  };
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const s = useContext(SessionContext);
  if (!s) throw new Error("useSession outside a signed-in page");
  return s;
}
