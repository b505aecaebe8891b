import { fromBinary } from "@bufbuild/protobuf";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { status as Code } from "@grpc/grpc-js";
import type { ServiceError } from "@grpc/grpc-js";

import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

/** The domain of every `google.rpc.ErrorInfo` the resolver sends. */
export const ERROR_DOMAIN = "controlplane-resolver";

/** The trailer that carries the serialised `google.rpc.Status`. */
const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** The request-id metadata key: sent by callers who have one, echoed by the
 * server in every response's trailers. */
export const REQUEST_ID_KEY = "x-request-id";

function firstString(values: readonly (string | Buffer)[] | undefined): string | null {
  const found = values?.find((value): value is string => typeof value === "string");
  return found ?? null;
}

/**
 * A call that failed with any status other than `NOT_FOUND` (the methods
 * answer `null`/`false` for that; see docs/typescript-client.md).
 *
 * Branch on `reason`, the stable `ErrorInfo` reason (`INVALID_ID`,
 * `DATABASE_UNAVAILABLE`, `NOT_READY`, … — docs/errors.md); it is `null` when
 * the status carried no detail (`UNAUTHENTICATED`, `PERMISSION_DENIED`,
 * `RESOURCE_EXHAUSTED`, a deadline gRPC itself expired, a connection that
 * could not be made). `details` (the server's message) and `message`
 * (`"INVALID_ARGUMENT: <details> [INVALID_ID]"`) are for people and may change.
 */
export class ResolverError extends Error {
  override readonly name = "ResolverError";

  constructor(
    /** The gRPC status code (`Code.INVALID_ARGUMENT`, …). */
    readonly code: Code,
    /** The status message as the server sent it (`message` adds code and reason). */
    readonly details: string,
    /** The `ErrorInfo` reason, or `null` without a detail. */
    readonly reason: string | null,
    /** The `ErrorInfo` metadata (`field`, `value`, `environment_id`, `database`). */
    readonly metadata: Readonly<Record<string, string>>,
    /** The `ErrorInfo` domain (`controlplane-resolver`), or `null`. */
    readonly domain: string | null = null,
    /** The `x-request-id` the server echoed in its trailers (the caller's
     * `requestId`, or one it generated), or `null` when the answer did not
     * come from the resolver (e.g. no connection could be made). */
    readonly requestId: string | null = null,
    options?: { cause?: unknown },
  ) {
    super(`${Code[code] ?? code}: ${details}${reason ? ` [${reason}]` : ""}`, options);
  }

  /** True for an `UNAVAILABLE` that no resolver answered (no `x-request-id`
   * came back): the call never reached a server, so making it again cannot
   * run it twice. */
  get unreached(): boolean {
    return this.code === Code.UNAVAILABLE && this.requestId === null;
  }

  /** The code's name: `"INVALID_ARGUMENT"`. */
  get codeName(): string {
    return Code[this.code] ?? String(this.code);
  }

  /** Reads code, message and the `ErrorInfo` detail of a grpc-js error. */
  static fromServiceError(error: ServiceError): ResolverError {
    let info: { reason: string; domain: string; metadata: Record<string, string> } | null = null;
    for (const value of error.metadata?.get(STATUS_DETAILS_KEY) ?? []) {
      if (typeof value === "string") continue;
      try {
        const status = fromBinary(StatusSchema, value);
        for (const detail of status.details) {
          if (anyIs(detail, ErrorInfoSchema)) {
            const unpacked = anyUnpack(detail, ErrorInfoSchema);
            if (unpacked !== undefined) info = unpacked;
          }
        }
      } catch {
        // A malformed trailer leaves the error without a reason.
      }
    }
    return new ResolverError(
      error.code,
      error.details ?? "",
      info?.reason ?? null,
      { ...(info?.metadata ?? {}) },
      info?.domain ?? null,
      firstString(error.metadata?.get(REQUEST_ID_KEY)),
      { cause: error },
    );
  }
}

export { Code };
