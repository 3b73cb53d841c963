import { useQueryClient } from "@tanstack/react-query";
import { BarChart3, Boxes, KeyRound, LogOut, Menu, Network, ScrollText, UserX, Wallet, X } from "lucide-react";
import { useEffect, useState, type ReactNode } from "react";
import { NavLink, useLocation } from "react-router";
import { api } from "../api/client";
import { useSession } from "../session";
import { errorText } from "./Status";
import { useToast } from "./Toasts";

interface Item {
  to: string;
  label: string;
  icon: ReactNode;
  show: boolean;
}

export function Layout({ children }: { children: ReactNode }) {
  const s = useSession();
  const [open, setOpen] = useState(false);
  const location = useLocation();
  const qc = useQueryClient();
  const toast = useToast();
  useEffect(() => setOpen(false), [location.pathname]);

  const items: Item[] = [
    { to: "/units", label: "Units & budgets", icon: <Network size={18} />, show: s.hasScope || s.teaches },
    { to: "/usage", label: "Usage", icon: <BarChart3 size={18} />, show: true },
    { to: "/keys", label: "My API keys", icon: <KeyRound size={18} />, show: s.hasMemberships },
    { to: "/models", label: "Models", icon: <Boxes size={18} />, show: s.hasScope },
    { to: "/finance", label: "Finance", icon: <Wallet size={18} />, show: s.hasScope },
    { to: "/audit", label: "Audit log", icon: <ScrollText size={18} />, show: s.isAdmin || s.isAuditor },
    { to: "/leavers", label: "Leavers", icon: <UserX size={18} />, show: s.isAdmin || s.isAuditor || s.isFinance },
  ];

  const signOut = async () => {
    try {
      const out = await api.post<{ redirect: string | null }>("/auth/logout");
      qc.clear();
      window.location.assign(out?.redirect ?? "/");
    } catch (e) {
      toast("error", `Sign-out failed: ${errorText(e)}`);
    }
  };

  const roles = [...new Set(s.me.scopes.map((x) => x.role))];
  const who = s.me.name ?? s.me.user_id;

  return (
    <div className={`shell ${open ? "nav-open" : ""}`}>
      <a href="#main" className="skip-link">
        Skip to content
      </a>
      <header className="topbar">
        <button
          type="button"
          className="icon-btn nav-toggle"
          aria-expanded={open}
          aria-controls="sidenav"
          aria-label={open ? "Close menu" : "Open menu"}
          onClick={() => setOpen((o) => !o)}
        >
          {open ? <X size={20} aria-hidden="true" /> : <Menu size={20} aria-hidden="true" />}
        </button>
        <div className="brand">
          <span className="brand-mark" aria-hidden="true">
            E
          </span>
          <span className="brand-name">EduAiQ</span>
          <span className="brand-inst">{s.me.institution_name}</span>
        </div>
        <div className="whoami">
          <span className="avatar" aria-hidden="true">
            {who.slice(0, 1).toUpperCase()}
          </span>
          <span className="whoami-text">
            <span className="whoami-name">{who}</span>
            <span className="whoami-role">{roles.length ? roles.join(" · ") : s.me.memberships.map((m) => m.role).join(" · ") || "member"}</span>
          </span>
          <button type="button" className="icon-btn" onClick={() => void signOut()} aria-label="Sign out" title="Sign out">
            <LogOut size={18} aria-hidden="true" />
          </button>
        </div>
      </header>
      <nav id="sidenav" className="sidenav" aria-label="Main">
        <ul>
          {items
            .filter((i) => i.show)
            .map((i) => (
              <li key={i.to}>
                <NavLink to={i.to} className={({ isActive }) => `nav-item ${isActive ? "active" : ""}`}>
                  <span aria-hidden="true">{i.icon}</span>
                  {i.label}
                </NavLink>
              </li>
            ))}
        </ul>
        <p className="nav-foot muted">
          {s.me.currency} · {s.me.timezone}
        </p>
      </nav>
      <main id="main" className="content" tabIndex={-1}>
        {children}
      </main>
    </div>
  );
}
