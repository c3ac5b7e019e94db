// What `require('@azure/functions-core')` loads under the dev host (dev/functionsCore.ts points the request here).
// A real file rather than a require.cache entry, so that loaders which decorate resolved paths (tsx namespaces) find it too.
// It forwards to the core API the active dev host installed on globalThis.
'use strict';
const key = Symbol.for('m365-mailer.dev.functionsCore');
module.exports = new Proxy(
  {},
  {
    get: (_target, property) => globalThis[key]?.[property],
    has: (_target, property) => property in (globalThis[key] ?? {}),
  },
);
