# Obtain the pinned upstream: llama.cpp as vendored in the llama-cpp-python sdist from PyPI.
# Outputs: COCKTAIL_UPSTREAM_ROOT (extracted + patched sdist tree), COCKTAIL_LLAMA_DIR.

set(COCKTAIL_SDIST_NAME "llama_cpp_python-0.3.36")
set(COCKTAIL_SDIST_REQ "llama-cpp-python==0.3.36")
set(COCKTAIL_SDIST_SHA256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")

set(COCKTAIL_UPSTREAM_SRC "" CACHE PATH
    "Already extracted ${COCKTAIL_SDIST_NAME} tree (e.g. a trimmed bundle made by bench/device/make_bundle.sh); skips the download")
set(COCKTAIL_SDIST_FILE "" CACHE FILEPATH
    "Local ${COCKTAIL_SDIST_NAME}.tar.gz to use instead of downloading (its sha256 is still checked)")

function(cocktail_cache_dir out)
  if(DEFINED ENV{COCKTAIL_GGUF_CACHE})
    set(dir "$ENV{COCKTAIL_GGUF_CACHE}")
  elseif(DEFINED ENV{XDG_CACHE_HOME})
    set(dir "$ENV{XDG_CACHE_HOME}/cocktail-gguf")
  else()
    set(dir "$ENV{HOME}/.cache/cocktail-gguf")
  endif()
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()

function(cocktail_sha256_ok file out)
  set(ok FALSE)
  if(EXISTS "${file}")
    file(SHA256 "${file}" got)
    if(got STREQUAL COCKTAIL_SDIST_SHA256)
      set(ok TRUE)
    endif()
  endif()
  set(${out} ${ok} PARENT_SCOPE)
endfunction()

function(cocktail_fetch_sdist out)
  if(COCKTAIL_SDIST_FILE)
    cocktail_sha256_ok("${COCKTAIL_SDIST_FILE}" ok)
    if(NOT ok)
      message(FATAL_ERROR "cocktail-gguf: ${COCKTAIL_SDIST_FILE} is missing or its sha256 is not ${COCKTAIL_SDIST_SHA256}")
    endif()
    set(${out} "${COCKTAIL_SDIST_FILE}" PARENT_SCOPE)
    return()
  endif()
  cocktail_cache_dir(cache)
  set(tarball "${cache}/${COCKTAIL_SDIST_NAME}.tar.gz")
  cocktail_sha256_ok("${tarball}" ok)
  if(NOT ok)
    file(REMOVE "${tarball}")
    file(MAKE_DIRECTORY "${cache}")
    message(STATUS "cocktail-gguf: downloading ${COCKTAIL_SDIST_REQ} sdist from PyPI into ${cache}")
    # --no-binary for this package only: its build requirements stay wheels.
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-binary llama-cpp-python
              --disable-pip-version-check -d "${cache}" "${COCKTAIL_SDIST_REQ}"
      RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "cocktail-gguf: pip download of ${COCKTAIL_SDIST_REQ} failed (${rc}):\n${log}\n"
                          "Offline? Pass -DCOCKTAIL_SDIST_FILE=/path/to/${COCKTAIL_SDIST_NAME}.tar.gz")
    endif()
    cocktail_sha256_ok("${tarball}" ok)
    if(NOT ok)
      file(SHA256 "${tarball}" got)
      file(REMOVE "${tarball}")
      message(FATAL_ERROR "cocktail-gguf: sha256 of the downloaded ${COCKTAIL_SDIST_NAME}.tar.gz is ${got}, "
                          "expected ${COCKTAIL_SDIST_SHA256}; refusing to build")
    endif()
  endif()
  set(${out} "${tarball}" PARENT_SCOPE)
endfunction()

file(GLOB COCKTAIL_PATCHES "${CMAKE_CURRENT_SOURCE_DIR}/ggml_patches/*.patch")
list(SORT COCKTAIL_PATCHES)
set(patch_ids "")
foreach(p IN LISTS COCKTAIL_PATCHES)
  file(SHA256 "${p}" h)
  list(APPEND patch_ids "${h}")
endforeach()

set(COCKTAIL_UPSTREAM_ROOT "${CMAKE_BINARY_DIR}/upstream/${COCKTAIL_SDIST_NAME}")
set(stamp "${CMAKE_BINARY_DIR}/upstream/stamp.txt")
set(want_stamp "src=${COCKTAIL_UPSTREAM_SRC};sdist=${COCKTAIL_SDIST_SHA256};patches=${patch_ids}")
set(have_stamp "")
if(EXISTS "${stamp}")
  file(READ "${stamp}" have_stamp)
endif()

if(NOT have_stamp STREQUAL want_stamp)
  file(REMOVE_RECURSE "${CMAKE_BINARY_DIR}/upstream")
  file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/upstream")
  if(COCKTAIL_UPSTREAM_SRC)
    if(NOT EXISTS "${COCKTAIL_UPSTREAM_SRC}/vendor/llama.cpp/CMakeLists.txt")
      message(FATAL_ERROR "cocktail-gguf: COCKTAIL_UPSTREAM_SRC=${COCKTAIL_UPSTREAM_SRC} has no vendor/llama.cpp/CMakeLists.txt")
    endif()
    file(COPY "${COCKTAIL_UPSTREAM_SRC}/" DESTINATION "${COCKTAIL_UPSTREAM_ROOT}")
  else()
    cocktail_fetch_sdist(tarball)
    message(STATUS "cocktail-gguf: extracting ${tarball}")
    file(ARCHIVE_EXTRACT INPUT "${tarball}" DESTINATION "${CMAKE_BINARY_DIR}/upstream"
         PATTERNS "${COCKTAIL_SDIST_NAME}/vendor/llama.cpp" "${COCKTAIL_SDIST_NAME}/llama_cpp"
                  "${COCKTAIL_SDIST_NAME}/LICENSE.md")
  endif()
  execute_process(
    COMMAND "${CMAKE_COMMAND}" -DUPSTREAM=${COCKTAIL_UPSTREAM_ROOT}
            "-DPATCHES=${COCKTAIL_PATCHES}" -P "${CMAKE_CURRENT_SOURCE_DIR}/cmake/apply_patches.cmake"
    RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "cocktail-gguf: applying ggml_patches failed (see above)")
  endif()
  file(WRITE "${stamp}" "${want_stamp}")
endif()

set(COCKTAIL_LLAMA_DIR "${COCKTAIL_UPSTREAM_ROOT}/vendor/llama.cpp")
