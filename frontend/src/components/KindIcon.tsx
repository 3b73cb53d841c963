import {
  BookOpen,
  Building,
  Building2,
  FlaskConical,
  Folder,
  GraduationCap,
  Landmark,
  Microscope,
  NotebookPen,
  Users,
  type LucideIcon,
} from "lucide-react";

const ICONS: Record<string, LucideIcon> = {
  university: Landmark,
  institution: Landmark,
  college: Building2,
  school: Building2,
  faculty: GraduationCap,
  department: Building,
  teaching: BookOpen,
  course: NotebookPen,
  section: NotebookPen,
  research: FlaskConical,
  lab: Microscope,
  group: Users,
  project: FlaskConical,
};

/** A unit kind's icon; the kind's name goes beside it in text, so the icon itself is decorative. */
export function KindIcon({ kind, size = 16 }: { kind: string; size?: number }) {
  const Icon = ICONS[kind.toLowerCase()] ?? Folder;
  return (
    <span className={`kind-icon kind-${kind.toLowerCase()}`} aria-hidden="true" data-kind={kind}>
      <Icon size={size} strokeWidth={2} />
    </span>
  );
}
