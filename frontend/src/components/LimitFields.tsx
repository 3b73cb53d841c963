import { LIMIT_FIELDS, type LimitField } from "../api/types";
import { LIMIT_LABELS, type LimitsForm } from "../lib/limits";
import { NumberField } from "./NumberField";

/** Requests/min, tokens/min and concurrent of one limit node, each optional (empty: no limit). */
export function LimitFields({
  legend,
  name,
  value,
  problems,
  hint,
  onChange,
}: {
  legend: string;
  name: string;
  value: LimitsForm;
  problems: Record<string, string | undefined>;
  hint?: string;
  onChange: (patch: Partial<LimitsForm>) => void;
}) {
  return (
    <fieldset className="metric-fieldset" data-limits={name}>
      <legend>{legend}</legend>
      {hint && <p className="muted small">{hint}</p>}
      <div className="row-wrap">
        {LIMIT_FIELDS.map((f: LimitField) => (
          <NumberField
            key={f}
            label={LIMIT_LABELS[f]}
            name={`${name}-${f}`}
            value={value[f]}
            placeholder="no limit"
            error={problems[f]}
            onChange={(v) => onChange({ [f]: v })}
          />
        ))}
      </div>
      {problems[""] && (
        <p className="field-error" role="alert">
          {problems[""]}
        </p>
      )}
    </fieldset>
  );
}
