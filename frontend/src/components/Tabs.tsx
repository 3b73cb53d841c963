import { useRef, type KeyboardEvent } from "react";
import { Link } from "react-router";

export interface TabDef {
  id: string;
  label: string;
  to: string;
}

/**
 * Tabs that are links (each tab has its own URL, so reload and back work) with the ARIA tabs
 * pattern: arrow keys, Home and End move between them.
 */
export function Tabs({ tabs, current, label }: { tabs: TabDef[]; current: string; label: string }) {
  const refs = useRef<(HTMLAnchorElement | null)[]>([]);
  const onKey = (e: KeyboardEvent, i: number) => {
    let next = -1;
    if (e.key === "ArrowRight") next = (i + 1) % tabs.length;
    else if (e.key === "ArrowLeft") next = (i - 1 + tabs.length) % tabs.length;
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = tabs.length - 1;
    if (next >= 0) {
      e.preventDefault();
      refs.current[next]?.focus();
      refs.current[next]?.click();
    }
  };
  return (
    <div className="tabs" role="tablist" aria-label={label}>
      {tabs.map((t, i) => (
        <Link
          key={t.id}
          ref={(el) => {
            refs.current[i] = el;
          }}
          to={t.to}
          role="tab"
          id={`tab-${t.id}`}
          aria-selected={t.id === current}
          aria-controls="tabpanel"
          tabIndex={t.id === current ? 0 : -1}
          className={`tab ${t.id === current ? "tab-active" : ""}`}
          onKeyDown={(e) => onKey(e, i)}
        >
          {t.label}
        </Link>
      ))}
    </div>
  );
}
