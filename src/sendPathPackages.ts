/**
 * The packages only the send path uses, which accepting a message never needs. scripts/build.mjs bundles them apart
 * as dist/functions/sendPath.js, and every import of one in the app bundle becomes a require of that file, so the
 * app's first request neither parses nor evaluates them. Each package is evaluated when first asked for.
 */

/* eslint-disable @typescript-eslint/no-require-imports */
const loaders = {
  '@azure/identity': () => require('@azure/identity') as unknown,
  '@azure/keyvault-secrets': () => require('@azure/keyvault-secrets') as unknown,
  '@azure/msal-node': () => require('@azure/msal-node') as unknown,
  '@azure/monitor-opentelemetry-exporter': () => require('@azure/monitor-opentelemetry-exporter') as unknown,
  '@opentelemetry/api': () => require('@opentelemetry/api') as unknown,
  '@opentelemetry/api-logs': () => require('@opentelemetry/api-logs') as unknown,
  '@opentelemetry/resources': () => require('@opentelemetry/resources') as unknown,
  '@opentelemetry/sdk-logs': () => require('@opentelemetry/sdk-logs') as unknown,
  '@opentelemetry/sdk-metrics': () => require('@opentelemetry/sdk-metrics') as unknown,
  'node-forge': () => require('node-forge') as unknown,
  nodemailer: () => require('nodemailer') as unknown,
};
/* eslint-enable @typescript-eslint/no-require-imports */

export type SendPathPackage = keyof typeof loaders;

/** The packages dist/functions/sendPath.js holds, and the app bundle leaves to it. */
export const SEND_PATH_PACKAGES = Object.keys(loaders) as SendPathPackage[];

/** The exports of one of {@link SEND_PATH_PACKAGES}, evaluated on the first call. */
export function sendPathPackage(name: string): unknown {
  if (!Object.hasOwn(loaders, name)) throw new Error(`${name} is not a send path package (src/sendPathPackages.ts)`);
  return loaders[name as SendPathPackage]();
}
