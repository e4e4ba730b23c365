/*
 * acl/acl.h - The one header an AscendCL program includes: the runtime, single operators and
 * offline models. Media (ops/acl_dvpp.h) and BLAS (ops/acl_cblas.h) calls live in their own
 * headers and libraries.
 *
 * Part of npufarm's AscendCL headers, written from the public interface. Names, values and
 * layouts follow CANN so programs written for Ascend compile unchanged.
 */

#ifndef INC_EXTERNAL_ACL_ACL_H_
#define INC_EXTERNAL_ACL_ACL_H_

#include "acl_rt.h"
#include "acl_op.h"
#include "acl_mdl.h"

#endif /* INC_EXTERNAL_ACL_ACL_H_ */
