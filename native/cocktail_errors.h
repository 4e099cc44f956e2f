// Thread-local last-error message shared by every native/ translation unit.
#pragma once

#include <string>

namespace cocktail {

// Records `msg` as this thread's last error and returns `code` (for `return fail(...)`).
int fail(int code, const std::string & msg);

}  // namespace cocktail
