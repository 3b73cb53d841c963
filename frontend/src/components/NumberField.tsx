/** A labelled text input for a number, with its problem shown under it and tied to it for screen readers. */
export function NumberField({
  label,
  name,
  value,
  error,
  suffix,
  placeholder,
  onChange,
}: {
  label: string;
  name: string;
  value: string;
  error?: string;
  suffix?: string;
  placeholder?: string;
  onChange: (v: string) => void;
}) {
  const id = `f-${name}`;
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <div className="input-suffix">
        <input
          id={id}
          name={name}
          inputMode="decimal"
          value={value}
          placeholder={placeholder}
          aria-invalid={!!error}
          aria-describedby={error ? `${id}-err` : undefined}
          onChange={(e) => onChange(e.target.value)}
        />
        {suffix && <span aria-hidden="true">{suffix}</span>}
      </div>
      {error && (
        <span id={`${id}-err`} className="field-error">
          {error}
        </span>
      )}
    </div>
  );
}
