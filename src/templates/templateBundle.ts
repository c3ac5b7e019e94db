/**
 * The templates this process renders.
 *
 * - Deployed: the esbuild build (scripts/build.mjs, scripts/templatesPlugin.ts) replaces this whole module with one
 *   that returns the bundle embedded at build time. No file is read at run time, and this file's code is not shipped.
 * - Dev and test (tsx, vitest): this module reads templates/ once, at first use.
 */
import type { TemplateBundle } from './templateRenderer';
import { TEMPLATES_DIR, loadTemplateBundle } from './templateLoader';

/** Where the bundle comes from: "embedded" in the deployed bundle, "templates-dir" under tsx and vitest. */
export const templateBundleOrigin: 'embedded' | 'templates-dir' = 'templates-dir';

let bundle: TemplateBundle | undefined;

/** The templates, layouts and partials of this deployment. */
export function templateBundle(): TemplateBundle {
  bundle ??= loadTemplateBundle(TEMPLATES_DIR);
  return bundle;
}
