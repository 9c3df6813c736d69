// The cache build's settings as a JSON file: `gati cache build --config F`.
//
//   {
//     "format": "gati-cache-config/1",          // optional
//     "kind": "linear",                          // linear | knn | kmeans, at every exit
//     "pool": "auto",                            // auto | avg | mix | avgGxG | mixGxG
//     "target_agreement": 0.99,
//     "rule": "bound",                           // bound | target | zero-error
//     "calibrate": "cascade",                    // cascade | per-exit
//     "calibrate_on": "clean+shifted",           // clean | clean+shifted
//     "traffic_requests": 1000, "never_hit_budget": 0.04, "cost": "measured", "auto_pool_budget": 0.005,
//     "train": 50000, "holdout": 10000, "selector": 0,           // k sorted probabilities (0: none)
//     "hidden": 32,                              // learned caches: hidden ReLU units (GATI's MLP; 0: linear)
//     "sgd": {"epochs": 10, "batch": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "seed": 0,
//             "distill_alpha": 0, "distill_temperature": 6},
//     "approx": {"reduced": 64, "knn_entries": 10000, "neighbours": 10, "centroids": 1024,
//                "kmeans_samples": 20000, "iterations": 15, "seed": 0},
//     "memory": {"enabled": false, "pool": "avg2x2", "capacity": 1024, "min_confidence": 0.99,
//                "requests": 10000},
//     "exits": {"layer2.1": {"kind": "knn", "pool": "avg2x2"}, "layer1.0": {"enabled": false},
//               "stem": {"hidden": 64}}
//   }
//
// Every key is optional (a missing one keeps BuildOptions' default); an
// unknown key, a value of the wrong type or out of range, or a name that is
// not one of the valid ones is an error naming the file and the key and
// listing what is valid.  Exit names are checked against the model when the
// build starts (build_caches), since the file does not know the model.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "cache/build.h"

namespace gati {

// The settings in `j` over BuildOptions' defaults; `where` names it in errors.
BuildOptions build_options_from_json(const nlohmann::json& j, const std::string& where);
// The same from a file (at most 1 MiB).
BuildOptions load_build_config(const std::string& path);
// Every setting, as a file load_build_config reads back to the same options
// (the progress callback aside).
nlohmann::ordered_json build_options_to_json(const BuildOptions& o);

}  // namespace gati
