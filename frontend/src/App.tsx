import { lazy, Suspense, useMemo } from "react";
import { Navigate, Route, Routes } from "react-router";
import { ApiError } from "./api/client";
import { useMe } from "./api/hooks";
import { Layout } from "./components/Layout";
import { ErrorBox, Loading } from "./components/Status";
import { AuditPage } from "./pages/AuditPage";
import { FinancePage } from "./pages/FinancePage";
import { KeysPage } from "./pages/KeysPage";
import { LeaversPage } from "./pages/LeaversPage";
import { LoginPage } from "./pages/LoginPage";
import { ModelsPage } from "./pages/ModelsPage";
import { TreePage } from "./pages/TreePage";
import { UnitPage } from "./pages/UnitPage";
import { SessionContext, sessionOf, type Session } from "./session";

// Charts are the heaviest code: load them only on the pages that draw them.
const UsagePage = lazy(() => import("./pages/UsagePage"));

function home(s: Session): string {
  if (s.hasScope) return "/units";
  if (s.teaches) return "/units";
  return "/keys";
}

export function App() {
  const me = useMe();
  const session = useMemo(() => (me.data ? sessionOf(me.data) : null), [me.data]);

  if (me.isLoading) return <Loading label="Signing in…" />;
  if (me.error instanceof ApiError && me.error.status === 401) return <LoginPage />;
  if (me.error || !session)
    return (
      <main className="center-page">
        <ErrorBox error={me.error ?? "no session"} title="The dashboard could not reach the admin API" retry={() => void me.refetch()} />
      </main>
    );

  return (
    <SessionContext.Provider value={session}>
      <Layout>
        <Suspense fallback={<Loading />}>
          <Routes>
            <Route path="/" element={<Navigate to={home(session)} replace />} />
            <Route path="/units" element={<TreePage />} />
            <Route path="/units/:unitId" element={<UnitPage />} />
            <Route path="/units/:unitId/:tab" element={<UnitPage />} />
            <Route path="/usage" element={<UsagePage />} />
            <Route path="/keys" element={<KeysPage />} />
            <Route path="/models" element={<ModelsPage />} />
            <Route path="/finance" element={<FinancePage />} />
            <Route path="/audit" element={<AuditPage />} />
            <Route path="/leavers" element={<LeaversPage />} />
            <Route path="*" element={<Navigate to={home(session)} replace />} />
          </Routes>
        </Suspense>
      </Layout>
    </SessionContext.Provider>
  );
}
