/**
 * `@controlplane-resolver/client`: the typed Node.js client of the
 * control-plane resolver (docs/typescript-client.md).
 *
 * ```ts
 * import { ResolverClient, ResolverError, Code, pb } from "@controlplane-resolver/client";
 * ```
 *
 * `pb` is the generated contract (messages, enums, the service descriptor),
 * also importable as `@controlplane-resolver/client/v1`.
 */

export {
  DEFAULT_TIMEOUT_MS,
  RECONNECT_WAIT_MS,
  ResolverClient,
  channelOptions,
  serviceConfig,
  type CallOptions,
  type InvalidateTarget,
  type ResolverClientOptions,
} from "./client.js";
export { Code, ERROR_DOMAIN, REQUEST_ID_KEY, ResolverError } from "./errors.js";
export * as pb from "./v1.js";
